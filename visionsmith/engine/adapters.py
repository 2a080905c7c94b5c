"""Adapter files of parameter-efficient runs: save alone, reload onto the base model, merge.

``<run>/adapter/adapter.safetensors`` holds the adapter weights, the new head and (when the run
updated them) the BatchNorm statistics; its metadata holds the run's resolved config and classes,
so the file alone rebuilds the model: base model (embedded pretrained weights, or the run's seeded
initialisation for a from-scratch base) + adapters + head.  ``merge_run`` folds the adapters
into the base weights and writes a plain run folder (``adapt.mode: full``) that every other
command (eval, predict, export, serve) uses like any run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import from_dict, save_config, to_dict
from ..errors import UserError
from ..surgery.peft import adapter_state, merge_adapters
from ..surgery.transfer import PEFT_MODES
from .build import build_model, build_transforms, load_trained
from .checkpoint import CheckpointError, read_meta, save_weights
from .runfolder import write_json

ADAPTER = Path("adapter") / "adapter.safetensors"


def _updates_norm_stats(cfg) -> bool:
    return cfg.adapt.bn_stats == "update" or (cfg.adapt.bn_stats == "auto" and cfg.adapt.mode != "linear")


def save_adapter(run_dir: str | Path) -> Path:
    """Write ``<run>/adapter/adapter.safetensors`` from the run's best weights; returns its path."""
    run_dir = Path(run_dir)
    cfg, model, classes, _ = load_trained(run_dir)
    if cfg.adapt.mode not in PEFT_MODES:
        raise UserError(f"{run_dir} was trained with adapt.mode={cfg.adapt.mode}; adapter files exist for "
                         f"{', '.join(PEFT_MODES)}")
    sd = adapter_state(model, _updates_norm_stats(cfg))
    path = run_dir / ADAPTER
    save_weights(path, sd, {"config": to_dict(cfg), "classes": list(classes), "model": cfg.model.name,
                            "adapt": cfg.adapt.mode})
    return path


def load_adapter(path: str | Path, device: torch.device | str = "cpu"):
    """(config, model, classes) rebuilt from an adapter file alone, on top of the base model."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER if (path / ADAPTER).is_file() else path / ADAPTER.name
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; adapter files are written at the end of a run with "
                              f"adapt.mode in {', '.join(PEFT_MODES)} (or by `visionsmith merge`)")
    meta = read_meta(path)
    if "config" not in meta:
        raise CheckpointError(f"{path} is not a visionsmith adapter file (no config in its metadata)")
    cfg, classes = from_dict(meta["config"]), meta["classes"]
    torch.manual_seed(cfg.seed)  # a from-scratch base is rebuilt exactly as the run built it
    model = build_model(cfg, len(classes))
    sd = load_file(str(path))
    missing = set(sd) - set(model.state_dict())
    if missing:
        raise CheckpointError(f"{path} holds {len(missing)} tensors the rebuilt model lacks (e.g. "
                              f"{sorted(missing)[0]}); it was written by another model or version")
    model.load_state_dict(sd, strict=False)
    return cfg, model.to(device).eval(), classes


def merge_run(run_dir: str | Path, out: str | Path | None = None, check_images: int = 256) -> tuple[Path, float]:
    """Merge a peft run's adapters into its base weights; write a plain run folder at ``out``
    (default ``<run>-merged``).  Returns (folder, max |logit difference| against the adapter model
    on ``check_images`` validation/test images).  A difference above 1e-4 is an error."""
    from ..data import build_datasets
    run_dir = Path(run_dir)
    cfg, model, classes, info = load_trained(run_dir)
    if cfg.adapt.mode not in PEFT_MODES:
        raise UserError(f"{run_dir} was trained with adapt.mode={cfg.adapt.mode}: there is nothing to merge "
                         f"(merge applies to {', '.join(m for m in PEFT_MODES if m != 'prompt')})")
    data = build_datasets(cfg.data, cfg.seed)
    ds = data.get("test") or data.get("val") or data["train"]
    _, eval_tf = build_transforms(cfg, model)
    x = eval_tf(ds.images[:check_images], None)
    with torch.no_grad():
        before = model(x)
        merged = merge_adapters(model)
        after = merged(x)
    diff = float((before - after).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"merged model differs from the adapter model by {diff:.2e} (> 1e-4) in its logits; "
                           "not writing it")

    # a plain model: the adapter settings no longer apply (MERGED.md keeps them)
    mcfg = from_dict({**to_dict(cfg), "adapt": {**to_dict(cfg)["adapt"], "mode": "full", "lora": {}}})
    out = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-merged")
    if (out / "run.json").exists():
        raise FileExistsError(f"{out} already holds a run; pick another --out")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(mcfg, out / "config.yaml")
    meta = read_meta(run_dir / "checkpoints" / ("best.safetensors" if (run_dir / "checkpoints" / "best.safetensors").is_file()
                                                 else "last.safetensors"))
    save_weights(out / "checkpoints" / "best.safetensors", merged.state_dict(), {**meta, "merged_from": str(run_dir)})
    params = sum(p.numel() for p in merged.parameters())
    write_json(out / "run.json", {**info, "status": "merged", "merged_from": str(run_dir), "merge_max_abs_diff": diff,
                                  "params": {"total": params, "trainable": params, "trainable_pct": 100.0}})
    for name in ("metrics.jsonl", "eval.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    (out / "MERGED.md").write_text(f"Merged from `{run_dir}` ({cfg.adapt.mode} adapters folded into the base weights);\n"
                                   f"max |logit difference| on {len(x)} images: {diff:.2e}.\n"
                                   f"Adapter config: {json.dumps(to_dict(cfg)['adapt'])}\n")
    return out, diff
