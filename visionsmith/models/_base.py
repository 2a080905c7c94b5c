"""The backbone interface every task and method relies on (timm's contract).

A model is an ``nn.Module`` with:
  - ``num_features``: channels of the feature map that the head consumes;
  - ``forward_features(x [B,C,H,W]) -> feats``: ``[B, num_features, h, w]`` for CNNs
    or ``[B, num_features]`` when the backbone pools itself (transformers);
  - ``forward_head(feats, pre_logits=False) -> [B, num_classes]`` (or ``[B, num_features]``);
  - ``reset_classifier(num_classes)``: a fresh head for a new class count;
  - ``pretrained_cfg``: ``{"mean", "std", "input_size", "weights"}`` used for normalisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassifierHead(nn.Module):
    """Global average pool + dropout + linear.  feats [B,C,h,w] or [B,C] -> logits [B,K].

    ``fc`` is an ``nn.Identity`` when ``num_classes == 0`` (a features-only model).
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.dim() == 4:
            x = x.mean((2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class BackboneMixin:
    """``forward`` and ``reset_classifier`` for models whose head is ``self.head: ClassifierHead``."""

    num_features: int
    num_classes: int
    head: ClassifierHead

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        drop = self.head.drop.p
        self.head = ClassifierHead(self.num_features, num_classes, drop).to(_param_device(self))

    def get_classifier(self) -> nn.Module:
        return self.head.fc


def _param_device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Pretrained RGB stem ``[O,3,k,k]`` -> ``[O,in_chans,k,k]``: sum for 1 channel, tile otherwise
    (timm's ``adapt_input_conv``), so grayscale input keeps the pretrained response."""
    if in_chans == weight.shape[1]:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)
