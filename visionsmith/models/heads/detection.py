"""One-stage anchor-free detection: an FPN neck and the FCOS head on a backbone's feature pyramid.

Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019
(arXiv:1904.01355), with the later improvements of its v2 (arXiv:2006.09214): centre sampling,
regression normalised by the stride, centre-ness on the regression branch, GIoU loss.

Why FCOS (and not CenterNet): every location inside an object's centre region is a positive, so
a 20-56 px object gives several positives per image at stride 8, and the box is regressed as four
distances (trained with GIoU), which gives the tight boxes that mAP@[.5:.95] rewards within a few
epochs; CenterNet learns from one peak per object and needs long schedules (140 epochs in its
paper).  No anchors means no anchor shapes to tune for a new data set.

The model is ``EncoderDecoder(backbone, FCOSHead(...))`` (``models/segmenter.py``) and its output is ONE tensor, so the loop, evaluation, EMA, DDP, ONNX export and parity
checks handle it like any other model output:

    out = model(x)              # [B, N, 4 + 1 + K]  float
    out[..., :4]                # boxes, x1 y1 x2 y2 in input pixels (decoded inside the graph)
    out[..., 4]                 # centre-ness logit
    out[..., 5:]                # class logits (sigmoid, one per class; no background column)

N = sum over the levels of h_l * w_l locations, level by level, row-major;
``head.points(size)`` gives their ``[N, 2]`` centres and ``[N]`` strides, which the loss uses to assign targets.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .segmentation import _check_pyramid, _conv_block

__all__ = ["FCOSHead", "FPNNeck", "input_points", "level_points"]


class FPNNeck(nn.Module):
    """FPN (Lin et al., CVPR 2017): lateral 1x1 convs, top-down nearest upsampling and sums, a 3x3
    conv per level.  ``feats`` list of ``[B, C_i, h_i, w_i]`` -> list of ``[B, channels, h_i, w_i]``."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [conv(p) for conv, p in zip(self.output, lat)]


class _Scale(nn.Module):
    """A learnable scalar per level (FCOS sec. 3.2: levels share the head but not the box scale)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def level_points(sizes: list[tuple[int, int]], strides: list[int], device=None) -> tuple[Tensor, Tensor]:
    """Location centres of every level, in input pixels: (``[N, 2]`` x, y at ``(j + 0.5) * s``,
    ``[N]`` the stride of each), levels in order, row-major inside a level."""
    pts, st = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).add_(0.5).mul_(s))
        st.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(pts), torch.cat(st)


def input_points(size: tuple[int, int], strides: list[int], device=None) -> tuple[Tensor, Tensor]:
    """``level_points`` for an input of ``size`` (H, W): a level's side is the input side over its stride,
    rounded up, as the backbone's padded strided convolutions give."""
    sizes = [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in strides]
    return level_points(sizes, strides, device)


class FCOSHead(nn.Module):
    """FPN neck + the shared FCOS head, on the pyramid levels of strides ``strides``.

    Per level (weights shared across levels, a learnable box scale each): a classification tower
    and a regression tower (``convs`` x [3x3 conv, GroupNorm, ReLU]), then ``classifier``
    (3x3 -> K logits), ``bbox_pred`` (3x3 -> 4 distances l, t, r, b) and ``centerness`` (3x3 -> 1,
    on the regression tower).

    ``forward(feats, out_size)``: feats list of ``[B, C_i, h_i, w_i]`` -> ``[B, N, 4 + 1 + K]`` with
    the boxes decoded around each location (``distances = relu(scale_l * bbox_pred) * stride_l``,
    FCOS v2's normalised regression).  ``out_size`` is unused (boxes are in input pixels already);
    it is there so ``EncoderDecoder`` carries this head like a segmentation decoder.  The whole head
    (neck included) is the model's "classifier" for transfer learning and LoRA.
    """

    int8_own_ops_float = True  # INT8 export: the box decoding (pixel coordinates) stays float (export/quantize.py)

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 96,
                 convs: int = 2, prior: float = 0.01):
        super().__init__()
        in_channels, self.strides = _check_pyramid("FCOSHead", in_channels, strides, "gn")
        self.num_classes = num_classes
        self.neck = FPNNeck(in_channels, channels)
        self.cls_tower = nn.Sequential(*[_conv_block(channels, channels, 3, "gn") for _ in range(convs)])
        self.reg_tower = nn.Sequential(*[_conv_block(channels, channels, 3, "gn") for _ in range(convs)])
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in self.strides)
        for m in [*self.cls_tower.modules(), *self.reg_tower.modules(), self.classifier, self.bbox_pred,
                  self.centerness]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # focal-loss prior (RetinaNet sec. 4.1): every location starts at P(object) = prior, so the
        # many easy negatives do not swamp the first steps
        self.prior = prior
        nn.init.constant_(self.classifier.bias, -math.log((1 - prior) / prior))

    def get_classifier(self) -> nn.Conv2d:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        old = self.classifier
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(old.in_channels, num_classes, 3, padding=1).to(old.weight.device, old.weight.dtype)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.constant_(self.classifier.bias, -math.log((1 - self.prior) / self.prior))

    def points(self, size: tuple[int, int], device=None) -> tuple[Tensor, Tensor]:
        """(``[N, 2]`` location centres, ``[N]`` strides) for an input of ``size`` (H, W): the rows of
        ``forward``'s output (a level's side is the input side over its stride, rounded up, as the
        backbone's padded strided convolutions give)."""
        return input_points(size, self.strides, device)

    def forward(self, feats: list[Tensor], out_size=None) -> Tensor:
        feats = self.neck(feats)
        outs = []
        for f, s, scale in zip(feats, self.strides, self.scales):
            c, r = self.cls_tower(f), self.reg_tower(f)
            dist = F.relu(scale(self.bbox_pred(r))) * s                        # [B, 4, h, w]
            o = torch.cat([dist, self.centerness(r), self.classifier(c)], 1)   # [B, 5 + K, h, w]
            outs.append(o.flatten(2).transpose(1, 2))                          # [B, h*w, 5 + K]
        out = torch.cat(outs, 1)                                               # [B, N, 5 + K]
        points, _ = level_points([tuple(f.shape[-2:]) for f in feats], self.strides, out.device)
        p = points.to(out.dtype)
        boxes = torch.cat([p - out[..., 0:2], p + out[..., 2:4]], -1)          # l,t,r,b -> x1,y1,x2,y2
        return torch.cat([boxes, out[..., 4:]], -1)
