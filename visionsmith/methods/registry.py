"""Method by name, from the config's ``method`` key (the only place a method name is a string)."""
from __future__ import annotations

import torch.nn as nn

from ..config import Config


def build_method(cfg: Config, model: nn.Module) -> nn.Module:
    if cfg.method == "supervised":
        from .supervised import Supervised
        return Supervised(model, label_smoothing=cfg.train.label_smoothing)
    raise ValueError(f"unknown method {cfg.method!r}")
