"""``visionsmith rd RUN... --out DIR``: rate-distortion curves of learned-compression runs against the
classical codecs, and their Bjontegaard delta rates.

Each run gives a point per rate level (its test evaluation: the mean over the held-out photographs
of bits per pixel, PSNR and MS-SSIM of real files).  A variable-rate run is a curve of its own,
named after the run folder; single-rate runs of the same ``model.name`` join into one curve.  The
classical curves come from the runs' own evaluations (the same photographs, ``codec.baselines``).
Writes ``DIR/rd.png`` (bits per pixel against PSNR and against MS-SSIM) and ``DIR/rd.json``
(every point, and the BD-rate of every learned curve against every classical one, over 0.2-1.5 bpp).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

RATE_RANGE = (0.2, 1.5)  # bits per pixel over which the BD-rates are taken


@dataclass
class RDResult:
    out: Path
    curves: dict[str, list[dict]]  # learned curve -> points, bpp ascending
    baselines: dict[str, list[dict]]
    bd: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)  # model -> codec -> metric -> %


def _points(runs) -> tuple[dict, dict]:
    from ..config import load_config
    from ..engine.runfolder import read_json
    curves: dict[str, list[dict]] = {}
    baselines: dict = {}
    for r in runs:
        r = Path(r)
        ev = read_json(r / "eval.json") if (r / "eval.json").is_file() else None
        if not (r / "config.yaml").is_file():
            raise UserError(f"{r} is not a run folder (no config.yaml)")
        cfg = load_config(r / "config.yaml")
        if cfg.task != "compression":
            raise UserError(f"{r} is a {cfg.task} run; `visionsmith rd` compares learned-compression runs")
        if not ev or "levels" not in ev:
            raise UserError(f"{r} has no test evaluation (eval.json); run `visionsmith eval {r}` first")
        levels = ev.get("levels") or []
        label = cfg.model.name if len(levels) == 1 else f"{cfg.model.name} ({r.name})"
        curves.setdefault(label, []).extend(
            {"run": str(r), "level": p["level"], "lmbda": p["lmbda"],
             **{k: p.get(k) for k in ("bpp", "psnr", "ms_ssim", "bpp_estimated")}} for p in levels)
        for fmt, pts in (ev.get("baselines") or {}).items():
            baselines.setdefault(fmt, pts)
    for pts in curves.values():
        pts.sort(key=lambda p: p["bpp"])
    return curves, baselines


def rd(runs, out) -> RDResult:
    from ..metrics.compression import bd_rate
    curves, baselines = _points(runs)
    res = RDResult(Path(out), curves, baselines)
    for name, pts in curves.items():
        res.bd[name] = {fmt: {k: bd_rate(b, pts, k, *RATE_RANGE) for k in ("psnr", "ms_ssim")}
                        for fmt, b in baselines.items()}
    res.out.mkdir(parents=True, exist_ok=True)
    (res.out / "rd.json").write_text(json.dumps({"rate_range_bpp": RATE_RANGE, "learned": curves,
                                                 "classical": baselines, "bd_rate_percent": res.bd}, indent=2))
    from ..report.compression import rd_figure
    (res.out / "rd.png").write_bytes(rd_figure(curves, baselines))
    return res
