"""Prune a trained run, fine-tune it briefly, measure it: the engine side of ``visionsmith prune``.

A pruning run is an ordinary run whose config has a ``prune`` section (``source``, ``kind``,
``amount``, ...).  ``build_model`` then builds the model as: the source run's trained model
(``load_trained``), pruned (``surgery/compress.py``), its BatchNorm statistics re-estimated on the
first ``prune.recalibrate`` training images.  Rebuilding repeats the pruning exactly
(magnitude ranking of the same weights), so the training loop, its checkpoints and exact resume
work unchanged.  Reloading the finished run never needs the source: ``load_trained`` builds the
unpruned architecture and narrows it to the shapes in the checkpoint (``load_pruned_weights``).

Unstructured runs fine-tune with PyTorch's pruning masks attached (``weight_orig``/``weight_mask``
in the training checkpoints); at the end ``best.safetensors`` is rewritten with plain weights
(``prune.remove``).  ``last.safetensors`` keeps the masks so that the run can still be resumed.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..config import (
    Config,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from ..data import build_datasets
from ..engine.build import (  # noqa: F401
    apply_pruning,
    build_model,
    build_transforms,
    example_input,
    load_pruned_weights,
    load_trained,
    pruned_from_source,
)
from ..engine.checkpoint import read_meta, save_weights
from ..engine.evaluate import predict_logits
from ..engine.runfolder import new_run_dir, read_json, update_run_json, write_json
from ..errors import UserError
from ..methods import trains_head
from ..models.weights import load_strict
from ..surgery.compress import (
    KINDS,
    check_amount,
    count_macs,
    count_params,
    make_permanent,
    sparsity,
)
from ..surgery.transfer import PEFT_MODES
from ..tasks import get_task

Finish = Callable[[Path], dict]  # api.finish: test evaluation, report, model card


def prune_config(src_cfg: Config, src: Path, amount: float, kind: str, finetune_epochs: int, importance: str,
                 scope: str, overrides=()) -> Config:
    """The pruning run's config: the source run's recipe (model, data, optimizer, augmentation), its
    ``prune`` section, ``finetune_epochs`` epochs (no step cap) and every weight trainable.
    ``overrides`` (``train.lr=1e-4``...) apply last."""
    d = to_dict(src_cfg)
    d["name"] = f"{src_cfg.name}-{kind}{round(100 * amount)}"
    d["prune"] = {"source": str(src.resolve()), "kind": kind, "amount": amount, "importance": importance,
                  "scope": scope}
    d["adapt"] = {}  # full fine-tuning: what pruning leaves must adapt to what it removed
    d["train"] = {**d["train"], "epochs": max(1, finetune_epochs), "max_steps": None}
    return from_dict(apply_overrides(d, list(overrides)))


# ---------------------------------------------------------------------------------------------
# Measuring


@torch.no_grad()
def throughputs(models: list[nn.Module], example: torch.Tensor, batch: int = 64, rounds: int = 9,
                min_s: float = 0.1, channels_last: bool = True, threads: int | None = 1) -> list[float]:
    """Forward images per second of each model on one random batch ``[batch, C, H, W]``, timed
    interleaved (round after round, every model once per round) so that a shared, noisy machine
    slows them alike; each value is the median over ``rounds``.  Ratios between them are what counts.

    ``threads``: torch threads while timing (restored after); 1 by default because a 2-thread
    OpenMP region waits for its slowest thread, which on a busy shared machine made every layer
    of a small CNN 10x slower and the timings meaningless."""
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(batch, *example.shape[1:])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    states = [m.training for m in models]
    models = [(m.to(memory_format=torch.channels_last) if channels_last else m).eval() for m in models]
    reps = []
    for m in models:  # warm-up, then as many forwards per timing as fill ``min_s``
        m(x)
        t0 = time.perf_counter()
        m(x)
        reps.append(max(1, int(min_s / max(time.perf_counter() - t0, 1e-6))))
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, (m, n) in enumerate(zip(models, reps)):
            t0 = time.perf_counter()
            for _ in range(n):
                m(x)
            times[i].append((time.perf_counter() - t0) / n)
    for m, s in zip(models, states):
        m.train(s)
    torch.set_num_threads(old_threads)
    return [batch / statistics.median(t) for t in times]


def eval_split(cfg: Config):
    """The split pruning is judged on: test when the data has one, else validation."""
    data = build_datasets(cfg.data, cfg.seed)
    for split in ("test", "val"):
        if split in data and len(data[split]):
            return split, data[split]
    raise UserError(f"data {cfg.data.name!r} has no test or validation images to judge the pruned model on; "
                     "set data.test_fraction or data.val_fraction")


def accuracy(model: nn.Module, cfg: Config, ds) -> float:
    """The task's headline metric (accuracy for classification) of ``model`` on ``ds``."""
    _, eval_tf = build_transforms(cfg, model)
    logits = predict_logits(model, ds, eval_tf, cfg.train.eval_batch_size, torch.device("cpu"))
    task = get_task(cfg)
    return float(task.score(logits, ds.labels, ds.classes)[task.headline])


def measure(model: nn.Module, cfg: Config, ds, weights: Path | None = None, acc: float | None = None) -> dict:
    """acc on ``ds`` (unless given), parameters, zero fraction, MACs per image, weight-file bytes
    (speed: ``throughputs``)."""
    return {"acc": accuracy(model, cfg, ds) if acc is None else acc, "params": count_params(model), "zeros": sparsity(model)["all_params"],
            "macs": count_macs(model, example_input(cfg)),
            "size_bytes": weights.stat().st_size if weights is not None and weights.is_file() else None}


def add_speeds(rows: list[dict], cfg: Config) -> list[dict]:
    """Time every row's model (its ``run`` folder) together; sets ``img_per_s``, ``speedup`` (over the
    first row) and ``threads`` in place."""
    models = [load_trained(r["run"])[1] for r in rows]
    speeds = throughputs(models, example_input(cfg), channels_last=cfg.train.channels_last, threads=1)
    for r, v in zip(rows, speeds):
        r.update(img_per_s=v, speedup=v / speeds[0], threads=1)
    return rows


def _beside(run_dir: Path, suffix: str) -> Path:
    """``runs/x`` -> ``runs/x<suffix>`` (``.`` is resolved first: it has no name to extend)."""
    src = run_dir if run_dir.name not in ("", ".", "..") else run_dir.resolve()
    return src.with_name(src.name + suffix)


def _weights(run_dir: Path) -> Path:
    ck = Path(run_dir) / "checkpoints"
    return ck / "best.safetensors" if (ck / "best.safetensors").is_file() else ck / "last.safetensors"


# ---------------------------------------------------------------------------------------------
# The commands


def check_source(run_dir: Path):
    """(config, model, classes, info) of a run that can be pruned, or an error saying why not."""
    cfg, model, classes, info = load_trained(run_dir)  # CheckpointError: no run folder, no weights
    if not trains_head(cfg):
        raise UserError(f"{run_dir} is a self-supervised pretraining run (method={cfg.method}): it has no trained "
                         "classifier to judge pruning by; train one from it first (model.pretrained=<run>) and prune that")
    if cfg.adapt.mode in PEFT_MODES:
        raise UserError(f"{run_dir} holds {cfg.adapt.mode} adapters on a base model: fold them in first with "
                         f"`visionsmith merge {run_dir}`, then prune the merged run")
    return cfg, model, classes, info


def baseline_row(run_dir: str | Path) -> dict:
    """The unpruned source run measured like a pruned one (amount 0)."""
    run_dir = Path(run_dir)
    cfg, model, _, _ = check_source(run_dir)
    split, ds = eval_split(cfg)
    return {"name": "unpruned", "kind": "-", "amount": 0.0, "split": split, "acc_before_ft": None,
            "run": str(run_dir), **measure(model, cfg, ds, _weights(run_dir))}


def prune_run(run_dir: str | Path, amount: float = 0.5, kind: str = "structured", finetune_epochs: int = 1,
              out: str | Path | None = None, importance: str = "l2", scope: str = "layer", overrides=(),
              finish: Finish | None = None, baseline: dict | None = None, reuse: bool = False) -> tuple[Path, dict]:
    """Prune ``run_dir``'s best weights, fine-tune ``finetune_epochs`` epochs with the run's recipe
    (0: none), evaluate and write a new run folder (default ``<run>-<kind>-<percent>``).

    Returns (run folder, row) with the row's ``acc`` (test split, else val), ``acc_before_ft``
    (pruned and BatchNorm-recalibrated, not yet fine-tuned), ``params``, ``zeros`` (fraction of zero parameters), ``macs``,
    ``img_per_s``, ``speedup``, ``size_bytes``; ``baseline`` (the unpruned run's row) is measured when
    not given.  The row is also written to ``<run>/prune.json`` and summed up in ``<run>/PRUNED.md``.
    ``reuse`` (a sweep's point): a folder that already holds ``prune.json`` is not redone, one whose
    fine-tune was killed is resumed (else an existing run is an error), and speed is left to the
    caller, which times all points together.
    """
    amount = check_amount(amount)
    if kind not in KINDS:
        raise UserError(f"pruning kind {kind!r} is not one of {', '.join(KINDS)}")
    if finetune_epochs < 0:
        raise UserError(f"finetune_epochs={finetune_epochs} must be >= 0")
    src = Path(run_dir)
    scfg, _, classes, sinfo = check_source(src)
    cfg = prune_config(scfg, src, amount, kind, finetune_epochs, importance, scope, overrides)
    out = Path(out) if out is not None else _beside(src, f"-{kind}-{round(100 * amount)}")
    if reuse and (out / "prune.json").is_file():  # done before (an interrupted sweep going on)
        return out, json.loads((out / "prune.json").read_text())["row"]
    baseline = baseline or baseline_row(src)
    split, ds = eval_split(cfg)

    # The pruned model before fine-tuning: how much the fine-tune has to win back.
    torch.manual_seed(cfg.seed)
    pruned = build_model(cfg, len(classes))
    before = accuracy(pruned, cfg, ds)
    zeros = sparsity(pruned)

    if finetune_epochs:
        from ..engine.loop import fit
        resume = out if reuse and (out / "checkpoints" / "last.safetensors").is_file() else None
        run = fit(cfg, out=None if resume else out, resume=resume)
        if kind == "unstructured":  # masks -> plain weights in the file every other command reads
            best = _weights(run)
            model = build_model(cfg, len(classes))
            load_strict(model, load_file(str(best)), f"checkpoint {best}")
            save_weights(best, make_permanent(model).state_dict(), read_meta(best))
    else:
        run = new_run_dir(cfg.name, out)
        save_config(cfg, run / "config.yaml")
        save_weights(run / "checkpoints" / "best.safetensors", make_permanent(pruned).state_dict(),
                     {"step": 0, "epoch": 0, "classes": classes, "model": cfg.model.name})
        keep = {k: sinfo[k] for k in ("seed", "method", "classes", "data", "env") if k in sinfo}
        write_json(run / "run.json", {**keep, "name": cfg.name, "status": "done", "adapt": "full",
                                      "params": {"total": count_params(pruned), "trainable": count_params(pruned),
                                                 "trainable_pct": 100.0}})
    info = {"source": str(src), "kind": kind, "amount": amount, "importance": importance, "scope": scope,
            "finetune_epochs": finetune_epochs, "recalibrate": cfg.prune.recalibrate, "split": split, "acc_before_ft": before,
            "sparsity_pruned_layers": zeros["pruned_layers"], "baseline": baseline}
    update_run_json(run, prune=info)
    if finish is not None:
        finish(run)
    _, final, _, rinfo = load_trained(run)
    ev = read_json(run / "eval.json") if split == "test" else {}  # finish() has just scored the test split
    row = {"name": f"{kind} {round(100 * amount)}%", "kind": kind, "amount": amount, "split": split,
           "acc_before_ft": before, "run": str(run), "finetune_s": rinfo.get("timing", {}).get("train_s"),
           **measure(final, cfg, ds, _weights(run), ev.get("acc"))}
    baseline = dict(baseline)  # the caller's row keeps its own timing
    if not reuse:  # a sweep times all its points together at the end instead
        add_speeds([baseline, row], cfg)  # timed side by side: the speed-up is a ratio from one run
    write_json(run / "prune.json", {"row": row, "baseline": baseline, **{k: v for k, v in info.items() if k != "baseline"}})
    if not reuse:
        (run / "PRUNED.md").write_text(pruned_note(row, baseline, info))
    return run, row


def pruned_note(row: dict, base: dict, info: dict) -> str:
    """A few lines for the run folder: what was removed and what it cost and bought."""
    what = "output channels" if info["kind"] == "structured" else "weights (smallest |w|)"
    where = "of every layer" if info["scope"] == "layer" else "ranked across layers"
    lines = [f"Pruned from `{info['source']}`: {100 * info['amount']:.0f}% of the {what} {where}"
             + (f", importance {info['importance']}" if info["kind"] == "structured" else "")
             + f"; BatchNorm statistics re-estimated on {info.get('recalibrate', 0)} training images (0: not)"
             + f"; fine-tuned {info['finetune_epochs']} epoch(s).", "",
             "| | unpruned | pruned |", "|---|---|---|",
             f"| {info['split']} accuracy | {base['acc']:.4f} | {row['acc']:.4f} (before fine-tune {row['acc_before_ft']:.4f}) |",
             f"| parameters | {base['params']:,} | {row['params']:,} |",
             f"| zero parameters | {100 * base['zeros']:.1f}% | {100 * row['zeros']:.1f}% |",
             f"| MACs per image | {base['macs']:,} | {row['macs']:,} |",
             f"| forward img/s (batch 64, {row['threads']} thread(s), timed together) | {base['img_per_s']:,.0f} | "
             f"{row['img_per_s']:,.0f} ({row['speedup']:.2f}x) |",
             f"| weight file | {base['size_bytes'] or 0:,} B | {row['size_bytes'] or 0:,} B |", ""]
    if info["kind"] == "unstructured":
        lines.append("Unstructured pruning keeps every tensor's shape: the zeros are stored and multiplied like any "
                     "other weight, so file size and speed do not change with dense kernels. Structured pruning "
                     "(`--structured`) makes the model smaller and faster.")
    return "\n".join(lines) + "\n"


def prune_sweep(run_dir: str | Path, amounts, kind: str = "structured", finetune_epochs: int = 1,
                out: str | Path | None = None, importance: str = "l2", scope: str = "layer", overrides=(),
                finish: Finish | None = None) -> tuple[Path, list[dict]]:
    """``prune_run`` at each amount into ``out/<kind>-<percent>`` (default ``<run>-prune-sweep-<kind>``);
    -> (folder, rows), the unpruned run first.  Finished points are reused, a killed one resumed."""
    amounts = [check_amount(a) for a in amounts]  # every amount checked before anything runs
    if not amounts:
        raise UserError("the sweep needs at least one amount, e.g. --sweep 0.25,0.5,0.75")
    src = Path(run_dir)
    folder = Path(out) if out is not None else _beside(src, f"-prune-sweep-{kind}")
    folder.mkdir(parents=True, exist_ok=True)
    base = baseline_row(src)
    rows = [base]
    for a in amounts:
        _, row = prune_run(src, a, kind, finetune_epochs, folder / f"{kind}-{round(100 * a)}", importance, scope,
                           overrides, finish, base, reuse=True)
        rows.append(row)
    add_speeds(rows, load_config(src / "config.yaml"))  # all points timed together, after the training is over
    for row in rows[1:]:
        info = read_json(Path(row["run"]) / "prune.json")
        write_json(Path(row["run"]) / "prune.json", {**info, "row": row, "baseline": base})  # now with speeds
        (Path(row["run"]) / "PRUNED.md").write_text(pruned_note(row, base, info))
    write_json(folder / "sweep.json", {"source": str(src), "kind": kind, "finetune_epochs": finetune_epochs,
                                       "importance": importance, "scope": scope, "rows": rows})
    return folder, rows
