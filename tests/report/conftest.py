"""A real (tiny) run folder for the report tests.

A softmax-regression model is trained for real on scikit-learn's 8x8 digits for a few epochs,
and every file is written in the run-folder format the engine uses (DESIGN.md, "The run
folder"). The numbers in the report are therefore honest ones, and building it takes < 1 s.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_digits

from visionsmith.tasks import ClassificationTask, compute_metrics, worst_mistakes

CLASSES = [str(i) for i in range(10)]


def make_digits_run(run_dir: Path, epochs: int = 4, batch: int = 64, seed: int = 0) -> dict:
    """Train softmax regression on digits, write the run folder; return the test metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    g = np.random.default_rng(seed)
    order = g.permutation(len(y))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)  # [N, 64] in [0, 1]
    y = torch.tensor(y[order], dtype=torch.int64)
    tr, va, te = slice(0, 1200), slice(1200, 1400), slice(1400, None)

    config = {
        "name": "digits-linear", "seed": seed, "task": "classification", "method": "supervised",
        "model": {"name": "linear", "pretrained": False, "in_chans": 1},
        "data": {"name": "digits", "image_size": 8, "val_fraction": 0.1, "classes": CLASSES},
        "train": {"epochs": epochs, "batch_size": batch, "optimizer": "sgd", "lr": 0.5,
                  "weight_decay": 0.0, "schedule": "cosine", "warmup_epochs": 0.0, "label_smoothing": 0.0},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    model = torch.nn.Linear(64, 10)
    task = ClassificationTask(classes=CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    steps_per_epoch = math.ceil(1200 / batch)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    t0, step, lines = time.time(), 0, []
    for epoch in range(epochs):
        perm = torch.randperm(1200)
        for i in range(0, 1200, batch):
            idx = perm[i:i + batch]
            tic = time.perf_counter()
            loss = task.loss(model(x[tr][idx]), y[tr][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            if step % 2 == 0:
                lines.append({"split": "train", "step": step, "epoch": epoch, "loss": loss.item(), "lr": lr,
                              "img_per_s": len(idx) / max(time.perf_counter() - tic, 1e-6),
                              "time": time.time() - t0})
        with torch.no_grad():
            m = compute_metrics(model(x[va]), y[va], CLASSES)
        lines.append({"split": "val", "step": step, "epoch": epoch, "acc": m["acc"], "top5": m["top5"],
                      "macro_f1": m["macro_f1"], "loss": m["loss"]})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    with torch.no_grad():
        logits = model(x[te])
    ev = compute_metrics(logits, y[te], CLASSES)
    worst = worst_mistakes(logits, y[te], k=12)
    ev.update(split="test", worst=worst, eval_img_per_s=12345.0)
    (run_dir / "eval.json").write_text(json.dumps(ev))
    idx = [w["index"] for w in worst]
    images = (x[te][idx].reshape(-1, 1, 8, 8) * 255).round().to(torch.uint8).numpy()
    np.savez(run_dir / "eval_worst.npz", images=images, labels=np.array([w["label"] for w in worst]),
             preds=np.array([w["pred"] for w in worst]),
             confidence=np.array([w["confidence"] for w in worst], dtype=np.float32))

    run = {
        "name": "digits-linear", "created": "2025-01-01T12:00:00+00:00", "status": "done",
        "git": {"rev": "0123456789abcdef0123456789abcdef01234567", "dirty": True}, "seed": seed,
        "env": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                "threads": torch.get_num_threads(), "device": "cpu"},
        "params": {"total": 650, "trainable": 650},
        "timing": {"train_s": time.time() - t0, "eval_s": 0.01, "train_img_per_s": 50000.0,
                   "eval_img_per_s": 12345.0},
        "command": "visionsmith train recipes/digits-linear.yaml",
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    (run_dir / "published.json").write_text(json.dumps([
        {"name": "baseline A", "acc": 0.90, "source": "made-up for the test"},
        {"name": "baseline B", "acc": 0.97, "source": "made-up for the test"},
    ]))
    return ev


@pytest.fixture(scope="session")
def _digits_run_master(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("runs") / "digits-linear"
    return d, make_digits_run(d)


@pytest.fixture
def digits_run(_digits_run_master, tmp_path) -> tuple[Path, dict]:
    """A fresh copy of the trained run folder (tests may break it) and its test metrics."""
    src, ev = _digits_run_master
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst, ev
