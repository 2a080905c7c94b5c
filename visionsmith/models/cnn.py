"""A plain CNN baseline for small images (Fashion-MNIST, 8x8 digits, CIFAR-sized crops):
``n`` x [3x3 conv -> BN -> ReLU -> 2x2 max-pool], then a dense hidden layer and the classifier
(the LeNet-5 pattern of LeCun et al., 1998, with batch norm, Ioffe & Szegedy, 2015).

The dense layers live in the head (``head.pool``, ``head.hidden``, ``head.fc``), so
``forward_features`` returns the conv map like every other backbone.  The head pools the map to a
fixed ``pool_size`` x ``pool_size`` grid before flattening, so any input size works while some
spatial layout survives (a global average would throw it away; a plain flatten would tie the
model to one input size).  The hidden dense layer is ``num_features`` wide, so ``num_features`` is
both the channel count of ``forward_features`` and the width of ``forward_head(pre_logits=True)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._base import BackboneMixin, FeatureMixin, _param_device, feature_info_from_plan, set_pixel_norm
from .registry import register_model
from .weights import WeightLoadError, load_pretrained


class ConvBlock(nn.Sequential):
    """[B, cin, H, W] -> [B, cout, H/2, W/2] (floor)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class MLPHead(nn.Module):
    """feats [B, C, h, w] -> adaptive avg-pool [B, C, p, p] -> flatten -> Linear(C*p*p, C) -> ReLU
    -> dropout -> ``fc`` [B, K].  ``pre_logits=True`` returns the [B, C] input of ``fc``."""

    def __init__(self, num_features: int, num_classes: int, pool_size: int = 4, drop_rate: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.hidden = nn.Linear(num_features * pool_size * pool_size, num_features)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.act(self.hidden(self.pool(x).flatten(1))))
        return x if pre_logits else self.fc(x)


class SimpleCNN(BackboneMixin, FeatureMixin, nn.Module):
    """``forward_features``: [0, 1] pixels [B, in_chans, H, W] -> [B, widths[-1], H / 2**len(widths),
    W / 2**len(widths)].

    ``feature_info``: one level per conv block, ``features.i`` at reduction ``2**(i+1)`` with
    ``widths[i]`` channels (32 @ 2, 64 @ 4 for ``simple_cnn``)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths=(32, 64), pool_size: int = 4,
                 drop_rate: float = 0.25, input_size: int = 28):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1]
        chans = (in_chans, *widths)
        self.features = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.head = MLPHead(self.num_features, num_classes, pool_size, drop_rate)
        # Neutral normalisation: no dataset statistics are baked into a model trained from scratch.
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                               "input_size": (in_chans, input_size, input_size)}
        set_pixel_norm(self, in_chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.feature_info = feature_info_from_plan([(f"features.{i}", w, 2) for i, w in enumerate(widths)])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.pixel_norm(x))

    def _feature_steps(self):
        return [(f"features.{i}", block) for i, block in enumerate(self.features)]

    def reset_classifier(self, num_classes: int) -> None:
        """A new ``head.fc`` only: the hidden dense layer is part of the learned representation."""
        self.num_classes = num_classes
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.fc = fc.to(_param_device(self))


def _build(widths, num_classes, pretrained, in_chans, drop_rate, pool_size):
    model = SimpleCNN(num_classes, in_chans, widths, pool_size, drop_rate)
    if pretrained is True:
        raise WeightLoadError("simple_cnn has no embedded pretrained weights; pass pretrained='<path>' "
                              "to a checkpoint of the same model and class count")
    if pretrained:
        load_pretrained(model, pretrained, asset="")
    return model


@register_model()
def simple_cnn(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 1, drop_rate: float = 0.25,
               pool_size: int = 4) -> SimpleCNN:
    """Plain CNN, 2 conv blocks 32-64 + dense 64 (85k params at 10 classes): the Fashion-MNIST baseline."""
    return _build((32, 64), num_classes, pretrained, in_chans, drop_rate, pool_size)


@register_model()
def simple_cnn_wide(num_classes: int = 10, pretrained: bool | str = False, in_chans: int = 1,
                    drop_rate: float = 0.25, pool_size: int = 4) -> SimpleCNN:
    """Plain CNN, 3 conv blocks 64-128-256 + dense 256 (1.4M params), for 28-64 px RGB or gray."""
    return _build((64, 128, 256), num_classes, pretrained, in_chans, drop_rate, pool_size)
