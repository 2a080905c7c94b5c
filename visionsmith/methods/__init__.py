"""Training methods: each an ``nn.Module`` whose ``forward(batch)`` returns a dict with ``loss``."""
from .registry import build_method

__all__ = ["build_method"]
