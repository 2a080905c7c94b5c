"""A dense-prediction model: a registered backbone's feature pyramid into a task head.

``EncoderDecoder(backbone, head)``: ``forward(x [B, C, H, W]) -> head(backbone.forward_intermediates(x,
levels), out_size=(H, W))``, e.g. logits ``[B, K, H, W]`` for segmentation.  ``x`` is [0, 1] pixels: the
backbone normalises them (its ``pixel_norm``, the first step of ``forward_intermediates``).  The head is the model's
"classifier" for transfer learning: ``get_classifier()`` returns the whole head, so
``adapt.mode=linear`` trains the decoder on a frozen backbone and LoRA adapts the backbone while the
decoder trains in full.  Checkpoint keys are ``backbone.*`` and ``head.*``.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class EncoderDecoder(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, levels: list[int]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.levels = list(levels)  # which feature_info levels the head reads, shallow to deep
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.num_classes = getattr(head, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_intermediates(x, self.levels)
        return self.head(feats, (int(x.shape[-2]), int(x.shape[-1])))

    def get_classifier(self) -> nn.Module:
        return self.head
