"""Shared fixtures: everything runs offline, on CPU, with a private asset/cache home."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m visionsmith ARGS`` in a subprocess; returns CompletedProcess (text)."""
    def run(*args, check=True, env=None, timeout=600):
        e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        res = subprocess.run([sys.executable, "-m", "visionsmith", *map(str, args)], cwd=tmp_path,
                             capture_output=True, text=True, env=e, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"visionsmith {' '.join(map(str, args))} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res
    return run


@pytest.fixture
def torchrun_available():
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not on PATH")
    return str(Path(sys.executable).parent / "torchrun")
