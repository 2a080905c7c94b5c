"""DDP with two CPU processes (gloo) under torchrun: rank 0 writes the run folder; resume is exact."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ARGS = [str(REPO / "recipes" / "digits.yaml"), "train.epochs=2", "train.threads=1", "train.checkpoint_every=4",
        "model.drop_rate=0.3", "--no-report"]


def _torchrun(torchrun, *args, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", *args],
                         capture_output=True, text=True, env=e, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_ddp_two_processes_and_exact_resume(tmp_path, torchrun_available):
    full, part = tmp_path / "full", tmp_path / "part"
    _torchrun(torchrun_available, "train", *ARGS, "--out", full)
    info = json.loads((full / "run.json").read_text())
    assert info["env"]["world_size"] == 2 and info["status"] == "done"
    # 1,797 digits - 20% test - 10% val = 1,294 train; 2 x 64 per step -> 10 steps/epoch
    assert info["steps_per_epoch"] == info["data"]["train"] // 128
    assert len([1 for _ in (full / "checkpoints").glob("state-*.pt")]) == 1  # only rank 0 writes

    _torchrun(torchrun_available, "train", *ARGS, "--out", part, env={"VISIONSMITH_STOP_AFTER_STEPS": "13"})
    assert json.loads((part / "run.json").read_text())["status"] == "running"
    _torchrun(torchrun_available, "resume", part, "--no-report")
    a = load_file(str(full / "checkpoints" / "last.safetensors"))
    b = load_file(str(part / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_worker_error_is_printed_and_fails_the_job(tmp_path, torchrun_available):
    # Workers leave through os._exit (engine.distributed.run_worker): the error must still be
    # printed and the exit code still reach torchrun.
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", "train",
                          str(REPO / "recipes" / "digits.yaml"), "train.epochs=0", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=e, timeout=300)
    assert res.returncode != 0
    assert "train.epochs must be >= 1" in res.stdout + res.stderr
    assert "failed (exitcode: 2)" in res.stderr
