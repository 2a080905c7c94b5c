"""ResNet with basic blocks (He et al., 2016, "Deep Residual Learning for Image Recognition",
arXiv:1512.03385), in two layouts:

  - ImageNet (``resnet18``): 7x7/2 stem + 3x3/2 max-pool, four stages 64-128-256-512, with
    torchvision's module names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.{0,1}``) so that a
    torchvision ``resnet18`` state dict loads strictly; its ``fc`` is re-keyed to ``head.fc``.
  - CIFAR (``resnet8``, ``resnet20``; paper section 4.2): 3x3/1 stem without max-pool, three
    stages 16-32-64 of ``n`` blocks each (6n+2 layers).  The shortcut that changes shape is a 1x1
    conv + BN (the paper's option B) rather than option A's zero padding: one code path for both
    layouts, at a few thousand extra parameters.
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
from .weights import WeightLoadError, load_pretrained

# Per-channel CIFAR-10 statistics: the usual normalisation for the small-image layout.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut.  [B, cin, H, W] -> [B, cout, H/stride, W/stride]."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # projection shortcut (option B)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class ResNet(BackboneMixin, FeatureMixin, nn.Module):
    """Configurable basic-block ResNet.

    Args:
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18) or ``(3, 3, 3)`` (ResNet-20).
        widths: channels per stage; stage ``i > 0`` halves the resolution.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool: /4) or ``"small"`` (3x3/1 conv, no pool).
        zero_init_residual: start each block as identity (Goyal et al., 2017), helps short schedules.

    ``forward_features``: [0, 1] pixels [B, in_chans, H, W] -> [B, widths[-1], H/s, W/s] with s = 4 * 2**(len-1)
    for the ImageNet stem (32 for ResNet-18) and 2**(len-1) for the small stem (4 for ResNet-20).

    ``feature_info``: ImageNet stem: ``relu`` (the stem, before the max-pool) widths[0] @ 2, then
    ``layerN`` @ 4, 8, 16, 32 (ResNet-18: 64 @ 2, 64 @ 4, 128 @ 8, 256 @ 16, 512 @ 32); small stem:
    one level per stage, ``layer1`` @ 1, ``layer2`` @ 2, ``layer3`` @ 4 (ResNet-8/20: 16, 32, 64).
    """

    def __init__(self, layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.0, stem: str = "imagenet",
                 zero_init_residual: bool = False):
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if len(layers) != len(widths):
            raise ValueError(f"layers {layers} and widths {widths} must have the same length")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        self.stage_names = []
        s0 = 2 if stem == "imagenet" else 1  # stride of conv1, and of the max-pool
        plan = [("relu", widths[0], s0), ("maxpool", widths[0], s0)]  # (module, out channels, stride), for feature_info
        for i, (n, c) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(cin if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))  # torchvision names: layer1..layerN
            self.stage_names.append(f"layer{i + 1}")
            plan.append((f"layer{i + 1}", c, 2 if i > 0 else 1))
            cin = c
        self.feature_info = feature_info_from_plan(plan)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        small = stem == "small"
        self.pretrained_cfg = {"mean": CIFAR_MEAN if small else IMAGENET_MEAN,
                               "std": CIFAR_STD if small else IMAGENET_STD,
                               "input_size": (in_chans, 32, 32) if small else (in_chans, 224, 224)}
        set_pixel_norm(self, in_chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pixel_norm(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def _feature_steps(self):
        steps = [("relu", lambda x: self.relu(self.bn1(self.conv1(x)))), ("maxpool", self.maxpool)]
        return steps + [(name, getattr(self, name)) for name in self.stage_names]


def _remap_torchvision(sd: dict[str, torch.Tensor], in_chans: int) -> dict[str, torch.Tensor]:
    out = {("head." + k if k.startswith("fc.") else k): v for k, v in sd.items()}
    if "conv1.weight" in out:  # absent in a foreign checkpoint: let the strict check name it
        out["conv1.weight"] = adapt_first_conv(out["conv1.weight"], in_chans)
    return out


def _load_local(model: ResNet, pretrained: bool | str, name: str, in_chans: int) -> None:
    """No ResNet weights are embedded: ``pretrained`` must be a local file in this layout."""
    if pretrained is True:
        raise WeightLoadError(f"{name} has no embedded pretrained weights; pass pretrained='<path>' to a "
                              "local state dict (.pth/.safetensors) with torchvision's key names")
    load_pretrained(model, pretrained, asset="", remap=lambda sd: _remap_torchvision(sd, in_chans))


def _cifar_resnet(name: str, n: int, num_classes, pretrained, in_chans, drop_rate, zero_init_residual):
    model = ResNet((n, n, n), (16, 32, 64), num_classes, in_chans, drop_rate, "small", zero_init_residual)
    if pretrained:
        _load_local(model, pretrained, name, in_chans)  # a checkpoint of this model, same class count
    return model


@register_model()
def resnet8(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 3, drop_rate: float = 0.0,
            zero_init_residual: bool = False) -> ResNet:
    """CIFAR-style ResNet-8 (3 stages 16/32/64, 1 block each; 78k params) for 28-64 px images."""
    return _cifar_resnet("resnet8", 1, num_classes, pretrained, in_chans, drop_rate, zero_init_residual)


@register_model()
def resnet20(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 3, drop_rate: float = 0.0,
             zero_init_residual: bool = False) -> ResNet:
    """CIFAR-style ResNet-20 (3 stages 16/32/64, 3 blocks each; 0.27M params) for 28-64 px images."""
    return _cifar_resnet("resnet20", 3, num_classes, pretrained, in_chans, drop_rate, zero_init_residual)


@register_model()
def resnet18(num_classes: int = 1000, pretrained: bool | str = False, in_chans: int = 3, drop_rate: float = 0.0,
             zero_init_residual: bool = False, stem: str = "imagenet") -> ResNet:
    """ResNet-18 (11.7M params), torchvision layout; ``pretrained='<path>'`` loads local torchvision weights.

    The file must be a torchvision ``resnet18`` ImageNet state dict (1000 classes): it loads
    strictly, then the head is reset to ``num_classes``.
    ``stem='small'`` swaps in the 3x3/1 stem for 32 px inputs (then ``conv1`` no longer fits ImageNet weights)."""
    model = ResNet((2, 2, 2, 2), (64, 128, 256, 512), 1000 if pretrained else num_classes, in_chans,
                   drop_rate, stem, zero_init_residual)
    if pretrained:
        _load_local(model, pretrained, "resnet18", in_chans)
        if num_classes != 1000:
            model.reset_classifier(num_classes)
    return model
