"""MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381), laid out with torchvision's module names
so that torchvision's ImageNet weights (the embedded ``mobilenetv2-imagenet`` asset) load strictly.

Key layout: ``features.0`` stem ConvBNReLU, ``features.1..17`` inverted residuals
(``.conv.{0,1,2,3}``), ``features.18`` the 1x1 conv to 1280; the classifier ``classifier.1``
is re-keyed to ``head.fc`` on load.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneMixin,
    ClassifierHead,
    FeatureMixin,
    adapt_first_conv,
    feature_info_from_plan,
    set_pixel_norm,
)
from .registry import register_model
from .weights import load_pretrained


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t=1) -> 3x3 depthwise -> 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, k=1))
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expand t, channels c, repeats n, first stride s) per stage, from the paper's Table 2.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(BackboneMixin, FeatureMixin, nn.Module):
    """``stem_stride=1`` keeps 4x more resolution for small inputs (28-64 px) at 4x the compute.

    ``feature_info`` (width 1.0, stem stride 2): ``features.1`` 16 @ 2, ``features.3`` 24 @ 4,
    ``features.6`` 32 @ 8, ``features.13`` 96 @ 16, ``features.18`` 1280 @ 32 (the last block of
    each stride; the deepest is ``forward_features``).  ``stem_stride=1`` halves every reduction."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_chans: int = 3,
                 drop_rate: float = 0.2, stem_stride: int = 2):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.num_features = _make_divisible(1280 * max(1.0, width_mult))
        self.num_classes = num_classes
        feats: list[nn.Module] = [ConvBNReLU(in_chans, cin, stride=stem_stride)]
        plan = [(cin, stem_stride)]  # (out channels, stride) of each features.i, for feature_info
        for t, c, n, s in _SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                plan.append((cout, s if i == 0 else 1))
                cin = cout
        feats.append(ConvBNReLU(cin, self.num_features, k=1))
        plan.append((self.num_features, 1))
        self.feature_info = feature_info_from_plan([(f"features.{i}", c, s) for i, (c, s) in enumerate(plan)])
        self.features = nn.Sequential(*feats)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 224, 224)}
        set_pixel_norm(self, in_chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels [B, in_chans, H, W] -> [B, 1280, H/32, W/32] (H/16 with stem_stride=1)."""
        return self.features(self.pixel_norm(x))

    def _feature_steps(self):
        return [(f"features.{i}", m) for i, m in enumerate(self.features)]


def _remap_torchvision(sd: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    out = {k.replace("classifier.1.", "head.fc."): v for k, v in sd.items()}
    if "features.0.0.weight" in out:  # absent in another architecture's file: load_strict names what differs
        out["features.0.0.weight"] = adapt_first_conv(out["features.0.0.weight"], in_chans)
    return out


@register_model(pretrained=("mobilenetv2-imagenet",))
def mobilenetv2(num_classes: int = 1000, pretrained: bool | str = False, in_chans: int = 3,
                drop_rate: float = 0.2, stem_stride: int = 2) -> MobileNetV2:
    """MobileNetV2 1.0 (3.5M params); ``pretrained=True`` loads the embedded ImageNet-1k weights."""
    model = MobileNetV2(1000 if pretrained else num_classes, 1.0, in_chans, drop_rate, stem_stride)
    if pretrained:
        load_pretrained(model, pretrained, "mobilenetv2-imagenet", lambda sd: _remap_torchvision(sd, in_chans))
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    return model
