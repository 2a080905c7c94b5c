"""Semantic-segmentation decoders on a backbone's feature pyramid.

A head sees only the pyramid's per-level channels and strides (a backbone's ``feature_info``:
``num_chs`` and ``reduction``, shallow to deep), never the backbone itself, so any backbone whose
``forward_intermediates(x)`` gives ``[B, C_i, H/s_i, W/s_i]`` maps can carry any head.

    head = build_seg_head("fpn", in_channels=[24, 32, 96, 320], strides=[4, 8, 16, 32], num_classes=21)
    logits = head(feats, out_size=x.shape[-2:])        # [B, 21, H, W]

The last layer of every head is a 1x1 ``nn.Conv2d`` named ``classifier`` (``head.classifier``):
transfer learning and ``reset_classifier`` treat it as the part that is new for a new class list.

Norms default to GroupNorm (``norm="gn"``): it is independent of the batch size, so batch 1 and
per-rank batches under DDP (no SyncBatchNorm needed) train the same way.  ``norm="bn"`` and
``"none"`` are there for comparison with the papers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DeepLabV3PlusDecoder", "FPNDecoder", "build_seg_head", "SEG_HEADS"]

_NORMS = ("gn", "bn", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "gn":  # 32 groups as in Wu & He 2018, fewer when the width is not a multiple of 32
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _conv_block(cin: int, cout: int, k: int, norm: str, dilation: int = 1) -> nn.Sequential:
    """conv (no bias when a norm follows) -> norm -> ReLU, padding keeping the spatial size."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=norm == "none"),
        _norm(norm, cout), nn.ReLU(inplace=True))


def _check_pyramid(name: str, in_channels, strides, norm: str) -> tuple[list[int], list[int]]:
    in_channels, strides = [int(c) for c in in_channels], [int(s) for s in strides]
    if not in_channels or len(in_channels) != len(strides):
        raise ValueError(f"{name}: in_channels {in_channels} and strides {strides} must be non-empty lists "
                         "of the same length (one entry per pyramid level)")
    if any(b < a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"{name}: strides {strides} must be ordered shallow to deep (non-decreasing)")
    if norm not in _NORMS:
        raise ValueError(f"{name}: norm must be one of {_NORMS}, got {norm!r}")
    return in_channels, strides


def _check_feats(name: str, feats, in_channels: list[int]) -> None:
    got = [tuple(f.shape) for f in feats]
    if len(feats) != len(in_channels) or any(f.ndim != 4 or f.shape[1] != c for f, c in zip(feats, in_channels)):
        raise ValueError(f"{name}: expected {len(in_channels)} feature maps [B, C_i, h_i, w_i] with C_i = "
                         f"{in_channels}, got shapes {got}")


class _SegHead(nn.Module):
    """What every head shares: ``classifier`` (1x1 conv) and ``reset_classifier``."""

    classifier: nn.Conv2d
    num_classes: int

    def get_classifier(self) -> nn.Conv2d:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``classifier`` for ``num_classes`` outputs, on the old one's device and dtype."""
        old = self.classifier
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)


class FPNDecoder(_SegHead):
    """Semantic FPN: the semantic branch of Panoptic FPN.

    Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019
    (arXiv:1901.02446), sec. 3; FPN itself: Lin et al., CVPR 2017.

    Levels with stride < ``min_stride`` are skipped (a stride-2 stem map costs much and adds little,
    the paper decodes at 1/4).  On the levels used, shallow to deep:

        lateral[i]  1x1 conv C_i -> channels
        top-down    p_i = lateral_i + resize(p_{i+1})   (nearest; no resize when both share a
                    size, as for ViT intermediates that all sit at stride 14 or 16)
        smooth[i]   3x3 conv + norm + ReLU on p_i
        fuse        bilinear resize of every level to the finest used level, then sum
        classifier  1x1 conv channels -> num_classes, then bilinear resize to ``out_size``

    The paper upsamples each level in 2x steps with a conv per step; one bilinear resize per level
    is cheaper and handles strides that are not powers of two (14 for DINOv2).

    Shapes: ``feats`` list of ``[B, in_channels[i], h_i, w_i]`` (all levels, including skipped ones),
    ``out_size`` ``(H, W)`` -> logits ``[B, num_classes, H, W]``.
    """

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128,
                 min_stride: int = 4, norm: str = "gn", dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.strides = _check_pyramid("FPNDecoder", in_channels, strides, norm)
        # indices of the levels decoded; when every level is finer than min_stride, decode the deepest
        self.levels = [i for i, s in enumerate(self.strides) if s >= min_stride] or [len(self.strides) - 1]
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(nn.Conv2d(self.in_channels[i], channels, 1) for i in self.levels)
        self.smooth = nn.ModuleList(_conv_block(channels, channels, 3, norm) for _ in self.levels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        _check_feats("FPNDecoder", feats, self.in_channels)
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.levels)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: deepest into each shallower level
            deeper = lat[i + 1]
            if deeper.shape[-2:] != lat[i].shape[-2:]:
                deeper = F.interpolate(deeper, size=lat[i].shape[-2:], mode="nearest")
            lat[i] = lat[i] + deeper
        size = lat[0].shape[-2:]  # the finest level used
        y = None
        for p, smooth in zip(lat, self.smooth):
            p = smooth(p)
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            y = p if y is None else y + p
        y = self.classifier(self.dropout(y))
        return F.interpolate(y, size=tuple(out_size), mode="bilinear", align_corners=False)


class _ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabv3, Chen et al. 2017, arXiv:1706.05587, sec. 3.3).

    Five parallel branches on ``[B, C, h, w]``: a 1x1 conv, three 3x3 convs at ``rates``, and image
    pooling (global average -> 1x1 conv -> broadcast back); concatenated, projected by a 1x1 conv to
    ``[B, channels, h, w]``.  The pooling branch has no norm (a biased conv + ReLU): after global
    pooling it sees one value per channel and image, which BatchNorm rejects in training with
    batch 1, and GroupNorm with one channel per group would zero it.
    """

    def __init__(self, cin: int, channels: int, rates: tuple[int, ...], norm: str, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList([_conv_block(cin, channels, 1, norm)]
                                   + [_conv_block(cin, channels, 3, norm, dilation=r) for r in rates])
        self.pool = _conv_block(cin, channels, 1, "none")
        self.project = nn.Sequential(_conv_block((len(rates) + 2) * channels, channels, 1, norm), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([conv(x) for conv in self.convs] + [pooled], dim=1))


class DeepLabV3PlusDecoder(_SegHead):
    """DeepLabv3+ decoder.

    Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution for
    Semantic Image Segmentation", ECCV 2018 (arXiv:1802.02611), sec. 3.1 and Fig. 2.

        aspp        ASPP on the deepest level -> [B, channels, h_d, w_d]
        low_level   1x1 conv + norm + ReLU on the low-level map (the finest level with stride
                    >= min_stride, 1/4 in the paper) -> [B, low_level_channels, h_l, w_l]
        fuse        bilinear resize of the ASPP output to h_l x w_l, concat, two 3x3 conv blocks
        classifier  1x1 conv -> num_classes, bilinear resize to ``out_size``

    ``atrous_rates`` default to the paper's (6, 12, 18) at output stride 16, scaled to the deepest
    level's stride so that they cover the same image area: (3, 6, 9) at stride 32, (12, 24, 36) at
    stride 8, (7, 14, 21) at ViT's 14.  The paper's separable convolutions are plain convolutions
    here (same receptive field, simpler).

    Shapes: ``feats`` list of ``[B, in_channels[i], h_i, w_i]``, ``out_size`` ``(H, W)`` ->
    logits ``[B, num_classes, H, W]``.
    """

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128,
                 low_level_channels: int = 48, min_stride: int = 4, atrous_rates: tuple[int, ...] | None = None,
                 norm: str = "gn", dropout: float = 0.1):
        super().__init__()
        self.in_channels, self.strides = _check_pyramid("DeepLabV3PlusDecoder", in_channels, strides, norm)
        self.num_classes = num_classes
        self.deep_level = len(self.strides) - 1
        # the finest level at >= min_stride; the deepest one when all are finer (a one-level pyramid)
        self.low_level = next((i for i, s in enumerate(self.strides) if s >= min_stride), self.deep_level)
        if atrous_rates is None:
            atrous_rates = tuple(max(1, round(r * 16 / self.strides[-1])) for r in (6, 12, 18))
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.aspp = _ASPP(self.in_channels[-1], channels, self.atrous_rates, norm, dropout)
        self.low_level_proj = _conv_block(self.in_channels[self.low_level], low_level_channels, 1, norm)
        self.fuse = nn.Sequential(_conv_block(channels + low_level_channels, channels, 3, norm),
                                  _conv_block(channels, channels, 3, norm))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor], out_size: tuple[int, int]) -> Tensor:
        _check_feats("DeepLabV3PlusDecoder", feats, self.in_channels)
        low = self.low_level_proj(feats[self.low_level])
        deep = self.aspp(feats[self.deep_level])
        if deep.shape[-2:] != low.shape[-2:]:
            deep = F.interpolate(deep, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.fuse(torch.cat([deep, low], dim=1)))
        return F.interpolate(y, size=tuple(out_size), mode="bilinear", align_corners=False)


SEG_HEADS = {"fpn": FPNDecoder, "deeplabv3plus": DeepLabV3PlusDecoder}


def build_seg_head(kind: str, in_channels: list[int], strides: list[int], num_classes: int, **kw) -> _SegHead:
    """A segmentation head by name: ``"fpn"`` (``FPNDecoder``) or ``"deeplabv3plus"``
    (``DeepLabV3PlusDecoder``); ``kw`` go to its constructor (``channels``, ``min_stride``, ``norm``, ...).

    ``in_channels``/``strides`` are a backbone's ``feature_info`` ``num_chs``/``reduction`` lists."""
    try:
        cls = SEG_HEADS[kind]
    except KeyError:
        raise ValueError(f"unknown segmentation head {kind!r}; choose one of {sorted(SEG_HEADS)}") from None
    try:
        return cls(in_channels, strides, num_classes, **kw)
    except TypeError as e:  # an option that this head does not take: name it
        raise ValueError(f"segmentation head {kind!r}: {e}") from e
