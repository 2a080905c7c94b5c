"""Exact resume: a run stopped at any step and resumed ends bit-identical to the uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visionsmith.config import load_config
from visionsmith.engine.checkpoint import CheckpointError, load_checkpoint
from visionsmith.engine.loop import fit

REPO = Path(__file__).resolve().parents[2]

# Dropout, EMA, augmentation, label smoothing and a mid-epoch checkpoint: every source of state.
OVERRIDES = ["train.epochs=2", "train.checkpoint_every=7", "train.ema=true", "train.ema_decay=0.9",
             "model.drop_rate=0.3", "train.label_smoothing=0.1", "train.threads=1", "train.log_every=4"]


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def _val_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"]


@pytest.mark.parametrize("stop_at", [5, 7, 27])  # before the first checkpoint, on one, in the second epoch
def test_resume_is_bit_exact(tmp_path, stop_at):
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "digits.yaml", OVERRIDES)
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=stop_at)
    # before the first checkpoint nothing was committed: resume trains the same folder from step 0
    fit(cfg, resume=part)
    _assert_same(_weights(full), _weights(part))
    _assert_same(_weights(full, "best"), _weights(part, "best"))
    _, s_full, _ = load_checkpoint(full / "checkpoints")
    _, s_part, _ = load_checkpoint(part / "checkpoints")
    _assert_same(s_full["ema"], s_part["ema"])
    assert _val_rows(full) == _val_rows(part)
    assert json.loads((part / "run.json").read_text())["status"] == "done"


def test_sigkill_mid_epoch_then_resume_from_cli(tmp_path):
    """A real SIGKILL at an arbitrary moment (possibly mid-write) of a CLI run, then `visionsmith resume`."""
    args = [REPO / "recipes" / "digits.yaml", *OVERRIDES, "train.epochs=3", "train.checkpoint_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "visionsmith", "train", *map(str, args), "--out", tmp_path / "full",
                    "--no-report"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "visionsmith", "train", *map(str, args), "--out",
                             tmp_path / "part", "--no-report"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_dir = tmp_path / "part" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(state_dir.glob("state-0000001[0-9].pt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "visionsmith", "resume", tmp_path / "part", "--no-report"],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "part"))
    info = json.loads((tmp_path / "part" / "run.json").read_text())  # the command that made the run stays
    assert info["command"].startswith("visionsmith train") and info["resumed_by"].startswith("visionsmith resume")


@pytest.mark.parametrize("damage", ["truncate", "zero", "random", "empty"])
def test_a_damaged_state_file_is_a_one_line_error(tmp_path, damage):
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "digits.yaml", OVERRIDES)
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=8)
    (state,) = (part / "checkpoints").glob("state-*.pt")
    data = state.read_bytes()
    state.write_bytes({"truncate": data[: len(data) // 2], "zero": bytes(len(data)),
                       "random": os.urandom(len(data)), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=f"{state.name} is damaged.*cannot resume"):
        fit(cfg, resume=part)


def test_resuming_with_another_architecture_names_the_mismatch(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "digits.yaml", OVERRIDES)
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=8)
    text = (part / "config.yaml").read_text()
    assert f"name: {cfg.model.name}" in text
    (part / "config.yaml").write_text(text.replace(f"name: {cfg.model.name}", "name: resnet18"))
    import visionsmith as vs
    from visionsmith.models.weights import WeightLoadError
    with pytest.raises(WeightLoadError, match="another architecture"):
        vs.resume(part, report=False)


def test_strict_bad_data_leaves_no_empty_run_folder(tmp_path):
    from visionsmith.data.errors import DataError
    root = tmp_path / "data" / "a"
    root.mkdir(parents=True)
    (root / "bad.png").write_bytes(b"not a png")
    cfg = load_config(None, ["data.name=folder", f"data.root={tmp_path / 'data'}", "data.strict=true"])
    with pytest.raises(DataError):
        fit(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
