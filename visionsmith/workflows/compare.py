"""``visionsmith compare SPEC.yaml``: several runs from one base recipe, one trade-off table and plot.

A spec (see ``recipes/compare-adaptation.yaml``)::

    name: compare-adaptation
    base: fashion-mnist-quick            # a recipe name or YAML path every run starts from
    overrides: [train.epochs=3]          # applied to every run
    runs:
      - {name: full-finetune, overrides: []}
      - {name: lora, overrides: [adapt.mode=lora]}
      - {name: distilled, overrides: [method=distill, "distill.teacher=${full-finetune}"]}

``${run-name}`` in an override is replaced by that earlier run's folder.  Each run is its own
``python -m visionsmith train`` process, so its peak memory is its own.  A run whose folder
already holds ``eval.json`` is reused, a half-finished one is resumed: an interrupted comparison
continues where it stopped; both only while the folder's config is what the spec now gives.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, _build
from ..engine.runfolder import read_json
from ..tasks import get_task


@dataclass
class CompareRun:
    name: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class CompareSpec:
    name: str
    base: str
    runs: list[dict]
    overrides: list[str] = field(default_factory=list)


def load_spec(path: str | Path) -> tuple[CompareSpec, list[CompareRun]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison spec {path} does not exist (see recipes/compare-adaptation.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with name, base, overrides, runs")
    spec = _build(CompareSpec, data)
    runs = [_build(CompareRun, r, f"runs[{i}].") if isinstance(r, dict) else None for i, r in enumerate(spec.runs)]
    if not runs or None in runs:
        raise ConfigError(f"{path}: runs must be a non-empty list of {{name, overrides}} mappings")
    names = [r.name for r in runs]
    for r in runs:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", r.name):
            raise ConfigError(f"{path}: run name {r.name!r} must be letters, digits, '-', '_' or '.' (it names a folder)")
        for ref in re.findall(r"\$\{([^}]*)\}", " ".join(r.overrides)):
            if ref not in names[:names.index(r.name)]:
                raise ConfigError(f"{path}: run {r.name!r} refers to ${{{ref}}}, which is not an earlier run "
                                  f"(earlier: {', '.join(names[:names.index(r.name)]) or 'none'})")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    return spec, runs


def row_of(name: str, run_dir: Path) -> dict:
    """One table row from a finished run folder."""
    info, ev = read_json(run_dir / "run.json"), read_json(run_dir / "eval.json")
    params, timing = info.get("params", {}), info.get("timing", {})
    mode = info.get("adapt", "full")
    if info.get("method", "supervised") != "supervised":
        mode = info["method"] if mode == "full" else f"{info['method']}+{mode}"
    from ..config import load_config
    cfg = load_config(run_dir / "config.yaml")
    if not cfg.model.pretrained and mode == "full":
        mode = "scratch"
    if ev.get("monitor") == "knn":
        mode += " (kNN acc)"  # self-supervised: scored by a kNN vote on frozen features, not a classifier
    task = get_task(cfg)  # runs of different tasks compare on their own headline metric
    return {"name": name, "folder": str(run_dir), "model": cfg.model.name, "mode": mode, "adapt": info.get("adapt"),
            "method": info.get("method"), "task": task.name, "metric": task.headline, "score": ev.get(task.headline),
            "acc": ev.get("acc"), "macro_f1": ev.get("macro_f1"),
            "trainable": params.get("trainable"), "total": params.get("total"),
            "trainable_pct": params.get("trainable_pct"), "train_s": timing.get("train_s"),
            "train_img_per_s": timing.get("train_img_per_s"), "eval_img_per_s": timing.get("eval_img_per_s"),
            "peak_mem_mb": timing.get("peak_mem_mb")}


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _check_same_config(run_dir: Path, base: Path, over: list[str]) -> None:
    """A run folder is reused or resumed only if it was made from what the spec now says: an edited
    spec must not leave stale rows in the table."""
    if not (run_dir / "config.yaml").is_file():
        return
    from ..config import load_config, to_dict
    keys = _changed_keys(to_dict(load_config(base, over)), to_dict(load_config(run_dir / "config.yaml")))
    if keys:
        raise ConfigError(f"{run_dir} was trained with another configuration than the spec now gives "
                          f"({', '.join(keys[:6])} differ); delete that folder to train it again, or pass another --out")


def run_comparison(spec_path: str | Path, out: str | Path | None = None, only: list[str] | None = None) -> tuple[Path, list[dict]]:
    """Train (or reuse) every run of the spec under ``out`` and write the comparison; -> (folder, rows)."""
    from ..config import find_recipe
    from ..report.compare import write_comparison
    spec, runs = load_spec(spec_path)
    folder = Path(out) if out is not None else Path("runs") / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    base = find_recipe(spec.base)
    if only:
        unknown = [n for n in only if n not in [r.name for r in runs]]
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such run; runs: {', '.join(r.name for r in runs)}")
    rows = []
    for r in runs:
        run_dir = folder / r.name
        over = [re.sub(r"\$\{([^}]*)\}", lambda m: str((folder / m.group(1)).resolve()), o)
                for o in spec.overrides + r.overrides]
        if only and r.name not in only and not (run_dir / "eval.json").is_file():
            continue
        _check_same_config(run_dir, base, over)
        if not (run_dir / "eval.json").is_file():
            print(f"\n== {r.name}: visionsmith train {base.name} {' '.join(over)}", flush=True)
            resume = (run_dir / "checkpoints" / "last.safetensors").is_file()
            cmd = ["resume", str(run_dir)] if resume else ["train", str(base), *over, "--out", str(run_dir)]
            if not resume and run_dir.exists() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            if not resume and (run_dir / "run.json").exists():  # started, never checkpointed: start again
                import shutil
                shutil.rmtree(run_dir)
            res = subprocess.run([sys.executable, "-m", "visionsmith", *cmd], env={**os.environ})
            if res.returncode != 0:
                raise RuntimeError(f"run {r.name!r} failed (exit {res.returncode}); its folder is {run_dir}; "
                                   f"fix the cause and run the same compare command again to continue")
        rows.append(row_of(r.name, run_dir))
    command = f"visionsmith compare {spec_path}"
    write_comparison(folder, rows, f"{spec.name}: {base.stem} + overrides", command)
    return folder, rows
