"""Checkpoints written atomically, loaded without unpickling code.

Layout in ``<run>/checkpoints/``:
  ``last.safetensors``   model weights; its metadata names the resume state file that goes with it
  ``state-<step>.pt``    optimizer, EMA, counters (``torch.load(weights_only=True)``)
  ``best.safetensors``   weights of the best validation epoch (the EMA weights when EMA is on)

The weights file is the commit point: the state file is written first under a new name, then
``last.safetensors`` is replaced atomically (temp file + ``os.replace``) pointing at it, then
older state files are removed.  A run killed at any instant leaves a consistent pair.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..models.weights import load_strict


class CheckpointError(UserError, RuntimeError):
    pass


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomic safetensors write; ``meta`` (JSON-able) is stored as the file's metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"visionsmith": json.dumps(meta)}))


def read_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("visionsmith", "{}"))
    except Exception as e:  # noqa: BLE001 - any decode failure means the same thing to the user
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({e}); "
                              "it may be from another tool or half written") from None


def load_weights(model: torch.nn.Module, path: Path) -> dict:
    """Strictly load ``path`` into ``model``; returns the file's metadata."""
    from safetensors.torch import load_file
    meta = read_meta(path)
    load_strict(model, load_file(str(path)), f"checkpoint {path}")
    return meta


def save_checkpoint(ckpt_dir: Path, model_sd: dict, state: dict, meta: dict) -> None:
    """Write the resume state then commit with ``last.safetensors``; prune older state files."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"state-{state['step']:08d}.pt"
    _atomic(ckpt_dir / name, lambda tmp: torch.save(state, tmp))
    save_weights(ckpt_dir / "last.safetensors", model_sd, {**meta, "state": name})
    for old in ckpt_dir.glob("state-*.pt"):
        if old.name != name:
            old.unlink(missing_ok=True)
    for tmp in ckpt_dir.glob("*.tmp"):  # leftovers of a run killed mid-write
        tmp.unlink(missing_ok=True)


def load_checkpoint(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """-> (model weights, resume state, metadata) of the last committed checkpoint."""
    from safetensors.torch import load_file
    last = ckpt_dir / "last.safetensors"
    if not last.is_file():
        raise CheckpointError(f"{ckpt_dir} holds no committed checkpoint (last.safetensors is missing while other "
                              "checkpoint files are there: the folder was changed by hand); start a new run with "
                              "`visionsmith train`")
    meta = read_meta(last)
    state_path = ckpt_dir / meta.get("state", "")
    if not meta.get("state") or not state_path.is_file():
        raise CheckpointError(f"{last} names resume state {meta.get('state')!r}, which is missing; "
                              "the run folder was changed by hand")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"step", "epoch", "batch", "optimizer"} <= set(state):
            raise ValueError("not a visionsmith resume state")
    except Exception as e:  # noqa: BLE001 - truncated, zeroed, random bytes, another program's file: one line
        why = (str(e).splitlines() or ["unreadable"])[0][:120]
        raise CheckpointError(f"{state_path} is damaged ({type(e).__name__}: {why}); "
                              f"this run cannot resume from it. Its last weights ({last.name}) are intact for "
                              "eval/export; to continue training, start a new run (`visionsmith train`)") from None
    try:
        weights = load_file(str(last))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{last} is damaged ({type(e).__name__}); start the run again with "
                              "`visionsmith train`") from None
    return weights, state, meta


def never_checkpointed(ckpt_dir: Path) -> bool:
    """True for a run killed before its first checkpoint: no weights and no resume state at all (a folder
    that has some but lacks ``last.safetensors`` was changed by hand, and ``load_checkpoint`` says so)."""
    return not ckpt_dir.is_dir() or not any(p.suffix in (".safetensors", ".pt") for p in ckpt_dir.iterdir())
