"""Plain supervised training: cross-entropy on the model's logits."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..tasks.classification import ClassificationTask


class Supervised(nn.Module):
    """``forward({'image': [B,C,H,W] float, 'label': [B] int64}) -> {'loss': [], 'output': [B,K]}``.

    The model is held as ``self.model`` so checkpoints and EMA see the plain model's keys.
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.task = ClassificationTask()
        self.label_smoothing = label_smoothing

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])
        loss = self.task.loss(logits.float(), batch["label"], self.label_smoothing)
        return {"loss": loss, "output": logits}
