"""Loading pretrained weights: from a declared, hash-checked asset, a local file or a visionsmith
run folder, strictly.

Strict means every key and every shape: a mismatch is an error naming the keys, never a
half-loaded model.  Files are read with ``torch.load(weights_only=True)`` or safetensors, so no
pickled code runs.  A run folder (e.g. a self-supervised pretraining run) gives its backbone:
every key but the classifier's, loaded strictly, the classifier left as built (its class count
may differ).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..assets import resolve
from ..errors import UserError


class WeightLoadError(UserError, RuntimeError):
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


def _differences(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``sd`` from loading into a model whose state dict is ``own`` (empty: it fits)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    return parts


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``sd`` into ``model`` requiring the same keys and shapes; raise naming what differs."""
    parts = _differences(model.state_dict(), sd)
    if parts:
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


def is_run_folder(path) -> bool:
    """A visionsmith run folder (``config.yaml`` or ``checkpoints/``), not a weight file or a
    transformers ``save_pretrained`` folder (which holds ``config.json``)."""
    p = Path(path)
    return p.is_dir() and ((p / "config.yaml").is_file() or (p / "checkpoints").is_dir())


def _classifier_prefix(model: nn.Module) -> str | None:
    get = getattr(model, "get_classifier", None)
    clf = get() if get is not None else None
    return next((name for name, mod in model.named_modules() if mod is clf), None) if clf is not None else None


def _run_model_section(run_dir: Path) -> dict:
    import yaml
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        return cfg.get("model", {}) if isinstance(cfg, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def load_run_backbone(model: nn.Module, run_dir: str | Path, name: str) -> Path:
    """Load a run folder's weights (``best``, else ``last``) into ``model`` (registered as ``name``),
    all but the classifier, strictly; the classifier stays as built.  Returns the file loaded.

    A run of another architecture, or of the same one with other settings (``in_chans``, kwargs), is
    a ``WeightLoadError`` that names both.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    run_dir = Path(run_dir)
    ck = run_dir / "checkpoints"
    path = next((ck / f for f in ("best.safetensors", "last.safetensors") if (ck / f).is_file()), None)
    if path is None:
        raise WeightLoadError(f"model.pretrained={run_dir} is a run folder without weights (no "
                              "checkpoints/best.safetensors or last.safetensors): it stopped before its first epoch "
                              "ended; resume it or point at another run")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("visionsmith", "{}"))
    except Exception as e:  # noqa: BLE001 - any decode failure means the same thing here
        raise WeightLoadError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    their = _run_model_section(run_dir)
    trained = meta.get("model") or their.get("name")
    if trained and trained != name:
        raise WeightLoadError(f"model.pretrained={run_dir} holds a {trained!r} model but this run builds {name!r}: "
                              f"weights fit only the architecture that made them; set model.name={trained} "
                              "(with the same model.in_chans and model.kwargs) or pretrain a " + repr(name))
    head = _classifier_prefix(model)
    in_head = lambda k: head is not None and (k == head or k.startswith(head + "."))  # noqa: E731
    sd = {k: v for k, v in load_file(str(path)).items() if not in_head(k)}
    own = {k: v for k, v in model.state_dict().items() if not in_head(k)}
    parts = _differences(own, sd)
    if parts:
        settings = ", ".join(f"model.{k}={their[k]}" for k in ("in_chans", "kwargs") if k in their)
        raise WeightLoadError(f"the backbone in {path} does not fit this {name}: " + "; ".join(parts) +
                              f". The run was made with {settings or 'other model settings'}; build this one the same way")
    model.load_state_dict(sd, strict=False)
    return path
