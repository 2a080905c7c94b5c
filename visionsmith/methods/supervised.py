"""Plain supervised training: the task's loss on the model's output."""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_method


class Supervised(nn.Module):
    """``forward({'image': [B,C,H,W] float, <task target>}) -> {'loss': [], 'output': model output}``.

    The model is held as ``self.model`` so checkpoints and EMA see the plain model's keys; the
    loss is the task's (cross-entropy for classification, per-pixel for segmentation, ...).
    """

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = getattr(self.model, "loss_and_output", None)
        if own is not None:  # a model with its own loss (transformers' DETR family: a set loss over queries)
            loss, out = own(batch)
            return {"loss": loss.float(), "output": out}
        out = self.model(batch["image"])
        return {"loss": self.task.loss(out.float(), batch), "output": out}


@register_method("supervised", tasks=None)  # any task: the loss is the task's
def build(cfg, model, task, teacher=None):
    """The task's own loss on labelled data."""
    return Supervised(model, task)
