"""Rate-distortion training of a learned codec (``task: compression``): minimise
``codec.lmbda * 255^2 * MSE + bits per pixel`` (Balle et al. 2017/2018; CompressAI's convention)."""
from __future__ import annotations

import torch.nn as nn

from .registry import register_method


class RateDistortion(nn.Module):
    """``forward({'image': [B,C,S,S] in [0,1], 'target': the same}) -> {'loss', 'bpp', 'mse', 'psnr', 'output'}``;
    the loop logs the bits and the distortion beside the loss."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict) -> dict:
        out = self.model(batch["image"])
        return {**self.task.rd_terms(out, batch["target"]), "output": out["x_hat"]}


@register_method("rate_distortion", tasks=("compression",))
def build(cfg, model, task, teacher=None):
    """Learned compression: distortion (MSE) weighted by codec.lmbda plus the entropy model's bits."""
    return RateDistortion(model, task)
