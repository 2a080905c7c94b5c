"""Exponential moving average of weights (Polyak averaging; timm ``ModelEmaV3`` in spirit)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


class ModelEMA(nn.Module):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` after each optimizer step.

    Decay warms up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by
    the random start.  Buffers (BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        n = int(self.updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for e, m in zip(self.module.parameters(), model.parameters()):
            e.lerp_(m.detach(), 1.0 - d)
        for e, m in zip(self.module.buffers(), model.buffers()):
            e.copy_(m)
