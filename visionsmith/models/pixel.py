"""A model that takes [0, 1] pixels: the normalisation moves inside the model.

Attacks (epsilon is a pixel budget only when the model sees pixels), ONNX export (a file that
needs no preprocessing constants beside it) and serving all want the same thing, so it lives
here, below every layer that uses it.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PixelModel(nn.Module):
    """``forward(pixels [B, C, S, S] float in [0, 1]) -> logits [B, K]``.

    ``mean``/``std``: ``[1, C, 1, 1]`` tensors (``BatchTransform.mean``/``.std``), kept as buffers
    so ``.to(device)`` and ONNX export carry them.  ``self.model`` is the wrapped model, unchanged.
    """

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().float().reshape(1, -1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std.detach().float().reshape(1, -1, 1, 1).clone(), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)
