"""The run folder: config, metrics, environment and git revision that tie a result to its cause."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch


def new_run_dir(name: str, out: str | Path | None) -> Path:
    """``out`` when given, else ``runs/<name>-<YYYYmmdd-HHMMSS>``; refuses a folder that holds a run."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{name}-{stamp}"
    out = Path(out)
    if (out / "checkpoints" / "last.safetensors").exists() or (out / "run.json").exists():
        raise FileExistsError(f"{out} already holds a run; resume it with `visionsmith resume {out}` "
                              "or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_info() -> dict:
    here = Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", False
    return {"rev": rev or None, "dirty": dirty}


def environment(device: torch.device) -> dict:
    import numpy
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "device": str(device), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    from .. import __version__
    env["visionsmith"] = __version__
    return env


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the resident-set
    high-water mark (``ru_maxrss``, KiB on Linux), which covers model, optimizer and data alike."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def update_run_json(run_dir: Path, **fields) -> dict:
    data = read_json(run_dir / "run.json")
    data.update(fields)
    write_json(run_dir / "run.json", data)
    return data


def command_line() -> str:
    return " ".join(["visionsmith" if sys.argv[0].endswith(("visionsmith", "__main__.py")) else sys.argv[0],
                     *sys.argv[1:]])


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed each line)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled, self.t0 = path, enabled, time.time()
        self.f = open(path, "a") if enabled else None

    def log(self, **row) -> None:
        if self.f:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def truncate_metrics(path: Path, step: int) -> None:
    """On resume: drop lines logged after the checkpoint's ``step`` (and a half-written last line),
    so the resumed run's log reads as if it had never stopped."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
