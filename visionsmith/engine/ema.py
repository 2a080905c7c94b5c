"""Exponential moving average of weights (Polyak averaging; timm ``ModelEmaV2/V3`` in spirit)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    """Keeps ``ema = decay * ema + (1 - decay) * current`` after each optimizer step.

    Float buffers (BatchNorm running mean/var) are averaged like the weights: the averaged weights
    need statistics of the averaged model, and copying the current model's statistics instead
    made the EMA model collapse for an epoch when they drifted (seen on Fashion-MNIST at 64 px).
    Integer buffers (``num_batches_tracked``) are copied.  Decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the random start.
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
        ema_state, state = self.module.state_dict(), model.state_dict()
        for k, e in ema_state.items():
            m = state[k].detach()
            if e.is_floating_point():
                e.lerp_(m, 1.0 - d)
            else:
                e.copy_(m)
