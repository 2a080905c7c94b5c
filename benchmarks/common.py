"""Helpers every benchmark script shares: what machine it ran on, how busy it was, where the result goes.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import it as ``common``.
"""
from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    return None


def env_info(load_before, load_after) -> dict:
    """What a result JSON records about where it ran: date, versions, CPU, platform, load before and after."""
    import datetime as dt
    import os

    import torch

    import visionsmith
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "visionsmith": visionsmith.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(), "platform": platform.platform(), "load_avg_before": load_before,
            "load_avg_after": load_after}


def write_result(out: Path, result: dict) -> dict:
    """The result JSON at ``out`` (folders made); -> ``result``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result
