"""Method by name, from the config's ``method`` key (the only place a method name is a string)."""
from __future__ import annotations

import torch.nn as nn

from ..config import Config


def build_method(cfg: Config, model: nn.Module, teacher: dict | None = None, input_norm=None) -> nn.Module:
    """The training method wrapping ``model``.  ``teacher`` (distill) comes from the engine, which
    knows run folders; ``input_norm`` is the (mean, std) the batches are normalised with.
    Self-supervised methods (simclr, mim) define ``evaluate``, the loop's per-epoch validation."""
    if cfg.method == "supervised":
        from .supervised import Supervised
        return Supervised(model, label_smoothing=cfg.train.label_smoothing)
    if cfg.method == "distill":
        from .distill import Distill
        if teacher is None:
            raise ValueError("method 'distill' needs a teacher (distill.teacher)")
        return Distill(model, teacher, cfg.distill, input_norm, cfg.train.label_smoothing)
    if cfg.method == "simclr":
        from .ssl_contrastive import SimCLR
        return SimCLR(model, cfg.ssl, input_norm)
    if cfg.method == "mim":
        from .ssl_masked import MaskedImageModeling
        return MaskedImageModeling(model, cfg.ssl, cfg.model.in_chans, cfg.data.image_size)
    if cfg.method == "adversarial":
        from .adversarial import AdversarialTraining
        return AdversarialTraining(model, cfg.adversarial, input_norm, cfg.train.label_smoothing)
    raise ValueError(f"unknown method {cfg.method!r}")
