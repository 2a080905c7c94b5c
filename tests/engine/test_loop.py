"""The loop's schedule, early stopping, optimizers and run-folder bookkeeping on real digits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visionsmith.config import load_config
from visionsmith.engine.build import build_optimizer, lr_at
from visionsmith.engine.loop import fit
from visionsmith.models import create_model

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"


def _rows(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_warmup_then_cosine():
    cfg = load_config(DIGITS, ["train.lr=0.1", "train.warmup_epochs=1", "train.min_lr_ratio=0.01"])
    lrs = [lr_at(cfg, s, total_steps=100, steps_per_epoch=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rises
    assert lrs[-1] == pytest.approx(0.001, rel=0.05)  # ends near min_lr_ratio * lr
    const = load_config(DIGITS, ["train.schedule=constant", "train.warmup_epochs=0"])
    assert lr_at(const, 57, 100, 10) == const.train.lr


def test_no_weight_decay_on_biases_and_norms():
    cfg = load_config(DIGITS, ["train.optimizer=sgd"])
    model = create_model("resnet8", num_classes=10)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_early_stopping_stops_and_says_so(tmp_path):
    # A model without BatchNorm statistics (ViT) and an lr so small that validation accuracy cannot
    # move: the first epoch sets the best, the second does not improve, patience 1 stops the run.
    cfg = load_config(DIGITS, ["train.lr=1e-12", "train.warmup_epochs=0", "train.early_stop.patience=1",
                               "train.threads=1", "train.epochs=6", "model.name=hf_vision",
                               "model.kwargs={config: {model_type: vit, image_size: 16, patch_size: 4, hidden_size: 32, "
                               "num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}"])
    run = fit(cfg, out=tmp_path / "es")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped_early"
    assert len(_rows(run, "val")) == 2
    assert (run / "checkpoints" / "best.safetensors").is_file()


@pytest.mark.parametrize("select,epoch", [("val", 1), ("last", 3)])
def test_select_picks_the_best_validation_epoch_or_the_last(tmp_path, select, epoch):
    # Validation cannot move (lr 1e-12): "val" keeps the first epoch's weights, "last" the third's.
    from visionsmith.engine.checkpoint import read_meta
    cfg = load_config(DIGITS, ["train.lr=1e-12", "train.warmup_epochs=0", f"train.select={select}",
                               "train.threads=1", "train.epochs=3", "model.name=hf_vision",
                               "model.kwargs={config: {model_type: vit, image_size: 16, patch_size: 4, hidden_size: 32, "
                               "num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}}"])
    run = fit(cfg, out=tmp_path / select)
    assert len({r["acc"] for r in _rows(run, "val")}) == 1  # the same score every epoch
    assert int(read_meta(run / "checkpoints" / "best.safetensors")["epoch"]) == epoch


def test_sgd_clip_ema_and_max_steps(tmp_path):
    cfg = load_config(DIGITS, ["train.optimizer=sgd", "train.lr=0.05", "train.grad_clip=1.0", "train.ema=true",
                               "train.max_steps=7", "train.log_every=2", "train.threads=1"])
    run = fit(cfg, out=tmp_path / "sgd")
    info = json.loads((run / "run.json").read_text())
    assert info["steps_done"] == 7 and info["status"] == "done"
    train = _rows(run, "train")
    assert [r["step"] for r in train] == [2, 4, 6, 7] and all(r["loss"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"] + 1.0  # finite and sane
    cfg_saved = (run / "config.yaml").read_text()
    assert "optimizer: sgd" in cfg_saved and "max_steps: 7" in cfg_saved


def test_refuses_to_overwrite_and_explains_big_batches(tmp_path):
    cfg = load_config(DIGITS, ["train.batch_size=5000", "train.threads=1"])
    with pytest.raises(ValueError, match="lower train.batch_size"):
        fit(cfg, out=tmp_path / "big")
