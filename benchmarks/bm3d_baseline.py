"""BM3D against a denoising run, on the same noisy held-out photographs and scored by the same code.

    pip install bm3d                                   # by hand: not a visionsmith dependency (see below)
    python benchmarks/bm3d_baseline.py RUN             # a denoising run folder (Gaussian noise)
    python benchmarks/bm3d_baseline.py recipes/denoise-photos.yaml   # BM3D alone, no network to compare

BM3D (Dabov et al. 2007; Makinen, Azzari, Foi 2020, PyPI ``bm3d``) is the classical denoiser a learned
one is usually held against.  Its licence allows non-commercial use only and forbids redistribution,
so it is never a dependency of visionsmith and never part of ``eval``: this script is the one place it
runs, when you have installed it yourself.  It restores the run's test photographs degraded exactly
as the run's evaluation degrades them (``EnhancementTask.degraded_split``: the same seeded 8-bit
noise), with the true sigma (as non-local means gets it), colour images through ``bm3d_rgb`` (the
opponent colour transform of CBM3D), and scores PSNR/SSIM on RGB and Y with
``visionsmith.metrics.enhancement``.  With a run folder, the run's own per-photograph scores from its
``eval.json`` are printed beside BM3D's, with the gap.  Results: ``benchmarks/results/bm3d-sigma<S>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_model, loadavg, write_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a denoising run folder, or a denoising recipe (BM3D alone)")
    p.add_argument("--limit", type=int, default=0, help="only the first N test photographs (0: all)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        import bm3d
    except ImportError:
        sys.exit("this benchmark needs BM3D, which visionsmith does not install (non-commercial licence, no "
                 "redistribution): pip install bm3d")

    from visionsmith.config import load_config
    from visionsmith.metrics.enhancement import EnhanceMetric
    from visionsmith.tasks import get_task
    cfg = load_config(args.run / "config.yaml" if args.run.is_dir() else args.run)
    task = get_task(cfg)
    e = cfg.enhance
    if task.name != "enhancement" or e.degradation != "noise" or e.noise != "gaussian":
        sys.exit(f"{args.run}: BM3D is compared on Gaussian denoising runs (task enhancement, degradation noise)")
    ds = task.build_datasets(cfg.seed)["test"]
    pairs = task.degraded_split(ds)[:args.limit or None]
    names = [Path(str(n)).name for n in ds.paths][:len(pairs)]
    print(f"bm3d_baseline: {len(pairs)} test photographs, sigma {e.sigma:g}; load average {loadavg()}", flush=True)
    rows, t0 = [], time.perf_counter()
    total = EnhanceMetric(shave=0)
    for name, (noisy, clean) in zip(names, pairs):
        z = noisy[0].permute(1, 2, 0).double().numpy()  # [H, W, C] in [0, 1]
        t = time.perf_counter()
        den = bm3d.bm3d_rgb(z, e.sigma / 255) if z.shape[2] == 3 else bm3d.bm3d(z[..., 0], e.sigma / 255)[..., None]
        out = torch.from_numpy(den).float().permute(2, 0, 1)[None]
        total.update(out, {"target": clean})  # 8-bit output against the 8-bit clean photograph
        rows.append({"image": name, **total.per_image[-1], "seconds": round(time.perf_counter() - t, 2)})
        print(f"  {name:<16} PSNR {rows[-1]['psnr']:.2f} dB  ({rows[-1]['seconds']:.1f} s)", flush=True)
    result = {"source": str(args.run), "sigma": e.sigma, "images": len(rows), "seconds": round(time.perf_counter() - t0, 1),
              "bm3d": {k: float(v) for k, v in total.compute().items()}, "per_image": rows,
              "bm3d_version": getattr(bm3d, "__version__", "unknown"), "cpu": cpu_model(), "load_avg_after": loadavg()}
    ev_path = args.run / "eval.json"
    if args.run.is_dir() and ev_path.is_file():
        ev = json.loads(ev_path.read_text())
        run_psnr = {r["image"]: r["psnr"] for r in ev.get("per_image", [])}
        result["run"] = {"model": cfg.model.name, "psnr": ev["psnr"], "ssim": ev.get("ssim"),
                         "gap_db": ev["psnr"] - result["bm3d"]["psnr"] if len(rows) == len(run_psnr) else None}
        print(f"\n  {'photograph':<16}{'BM3D':>8}{cfg.model.name:>10}{'gap':>8}")
        for r in rows:
            if r["image"] in run_psnr:
                print(f"  {r['image']:<16}{r['psnr']:>8.2f}{run_psnr[r['image']]:>10.2f}{run_psnr[r['image']] - r['psnr']:>+8.2f}")
    print(f"\n  BM3D: PSNR {result['bm3d']['psnr']:.2f} dB, SSIM {result['bm3d']['ssim']:.4f} "
          f"(PSNR-Y {result['bm3d'].get('psnr_y', float('nan')):.2f}) in {result['seconds']:.0f} s")
    if result.get("run", {}).get("gap_db") is not None:
        print(f"  {cfg.model.name}: PSNR {result['run']['psnr']:.2f} dB, {result['run']['gap_db']:+.2f} dB against BM3D")
    out = args.out or Path(__file__).parent / "results" / f"bm3d-sigma{e.sigma:g}.json"
    return write_result(out, result)


if __name__ == "__main__":
    main()
