"""Loading pretrained weights: from a declared, hash-checked asset or a local file, strictly.

Strict means every key and every shape: a mismatch is an error naming the keys, never a
half-loaded model.  Files are read with ``torch.load(weights_only=True)`` or safetensors, so no
pickled code runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..assets import resolve


class WeightLoadError(RuntimeError):
    pass


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``sd`` into ``model`` requiring the same keys and shapes; raise naming what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise WeightLoadError(f"{source} do not fit {type(model).__name__}: " + "; ".join(parts) +
                              ". Is this checkpoint from another architecture or class count?")
    model.load_state_dict(sd, strict=True)


def load_pretrained(model: nn.Module, pretrained: bool | str, asset: str,
                    remap: Callable[[dict], dict] = lambda sd: sd) -> None:
    """``pretrained=True`` -> the declared asset; a string -> a local weight file in the same layout."""
    path = resolve(asset) if pretrained is True else Path(pretrained)
    if not path.is_file():
        raise WeightLoadError(f"pretrained weight file {path} does not exist")
    load_strict(model, remap(read_state_dict(path)), f"weights {path.name}")
