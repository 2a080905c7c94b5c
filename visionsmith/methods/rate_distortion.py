"""Rate-distortion training of a learned codec (``task: compression``): minimise
``lmbda * 255^2 * MSE + bits per pixel`` (Balle et al. 2017/2018; CompressAI's convention), each
image at the lmbda of its rate level (``codec.lmbdas``)."""
from __future__ import annotations

import torch.nn as nn

from .registry import register_method


class RateDistortion(nn.Module):
    """``forward({'image': [B,C,S,S] in [0,1], 'target': the same, 'level': int64 [B]})
    -> {'loss', 'bpp', 'mse', 'psnr', 'output'}``;
    the loop logs the bits and the distortion beside the loss."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict) -> dict:
        out = self.model(batch["image"], batch["level"])
        return {**self.task.rd_terms(out, batch["target"], batch["level"]), "output": out["x_hat"]}


@register_method("rate_distortion", tasks=("compression",))
def build(cfg, model, task, teacher=None):
    """Learned compression: distortion (MSE) weighted by codec.lmbdas plus the entropy model's bits."""
    return RateDistortion(model, task)
