"""Enhancement throughput in megapixels/s: the trained network (fp32 and bfloat16, whole image and
tiled) against the classical method it is compared with, on the same photograph, in one run.

    python benchmarks/enhance_speed.py RUN                 # an enhancement run folder
    python benchmarks/enhance_speed.py RUN --size 1024 --rounds 3 --threads 2

The image is a held-out test photograph (astronaut, 512 x 512) tiled up to ``--size`` x ``--size``
input pixels and degraded as the run's evaluation degrades it.  Each contender restores it
``--rounds`` times (interleaved); the median time gives input megapixels/s.  Contenders:

    fp32_whole   the network on the whole image at once, float32
    fp32_tiled   the same through ``enhance.tile`` tiles (what ``visionsmith enhance`` does)
    bf16_tiled   tiled with bfloat16 autocast (AMX/AVX-512 BF16 where the CPU has them)
    classical    the classical method of the run's degradation: non-local means (the middle h of its grid), or bicubic

PSNR of each output against the clean image is printed beside it, so speed and quality are seen
together.  Results: ``benchmarks/results/enhance_speed-<degradation>.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_model, loadavg, write_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an enhancement run folder")
    p.add_argument("--size", type=int, default=1024, help="side of the test image in input pixels (default 1024)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from skimage import data as skdata

    from visionsmith.engine.build import load_trained
    from visionsmith.metrics.enhancement import psnr, to_u8
    from visionsmith.ops.classical import methods_for
    from visionsmith.tasks import get_task
    cfg, model, _, _ = load_trained(args.run)
    task = get_task(cfg)
    if task.name != "enhancement":
        sys.exit(f"{args.run} is a {task.name} run; this benchmark needs an enhancement run")
    s = task.scale
    side = args.size * s  # the clean image's side: the input is side / scale
    photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    reps = -(-side // photo.shape[-1])
    clean_u8 = photo.repeat(1, reps, reps)[:, :side, :side]
    if cfg.model.in_chans == 1:
        clean_u8 = clean_u8.float().mean(0, keepdim=True).round().to(torch.uint8)
    clean = clean_u8.unsqueeze(0).float() / 255
    x = task.degrade(clean, torch.Generator().manual_seed(0), train=False)  # [1, C, size, size]
    mp = x.shape[-1] * x.shape[-2] / 1e6
    e = cfg.enhance
    sigma = e.sigma if e.degradation == "noise" and e.noise == "gaussian" else None

    def net(tile, amp):
        def run():
            old = task.cfg.enhance.tile
            task.cfg.enhance.tile = tile
            try:
                return task.run_image(model, x, torch.bfloat16 if amp else None, cfg.train.channels_last)
            finally:
                task.cfg.enhance.tile = old
        return run

    # the classical method the network is held against: NLM (the middle h of the grid the
    # evaluation tunes over) for noise, bicubic for super-resolution
    method = "bicubic" if e.degradation == "sr" else "nlm"
    fn, grid = methods_for(e.degradation, s)[method]
    setting = grid[len(grid) // 2]
    noise = sigma or 25.0

    def classical():
        return fn(x, s if e.degradation == "sr" else noise, setting), method

    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    contenders = {"fp32_whole": net(0, False), "fp32_tiled": net(e.tile, False), "bf16_tiled": net(e.tile, True),
                  "classical": classical}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    quality: dict[str, float] = {}
    names = list(contenders)
    print(f"enhance_speed: {args.run} ({cfg.model.name}, {e.degradation}), input {x.shape[-1]} x {x.shape[-2]} "
          f"({mp:.2f} MP), {args.threads} threads, {args.rounds} rounds; load average {loadavg()}", flush=True)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            out = contenders[name]()
            times[name].append(time.perf_counter() - t0)
            if isinstance(out, tuple):
                out, quality["classical_method"] = out
            if r == 0:
                quality[name] = psnr(to_u8(out[0]), clean_u8, shave=task.shave)
    table = {n: {"median_s": statistics.median(times[n]), "mp_per_s": mp / statistics.median(times[n]),
                 "psnr": quality[n]} for n in names}
    print(f"\n  {'contender':<12}{'MP/s':>9}{'s':>9}{'PSNR dB':>9}")
    for n in names:
        t = table[n]
        print(f"  {n:<12}{t['mp_per_s']:>9.3f}{t['median_s']:>9.2f}{t['psnr']:>9.2f}")
    print(f"  (classical = {quality.get('classical_method')}); bf16_tiled / fp32_tiled "
          f"{table['bf16_tiled']['mp_per_s'] / table['fp32_tiled']['mp_per_s']:.2f}x, fp32_tiled / classical "
          f"{table['fp32_tiled']['mp_per_s'] / table['classical']['mp_per_s']:.2f}x")
    result = {"run": str(args.run), "model": cfg.model.name, "degradation": e.degradation, "scale": s,
              "input": [int(x.shape[-1]), int(x.shape[-2])], "megapixels": mp, "threads": args.threads,
              "rounds": args.rounds, "tile": e.tile, "classical_method": quality.get("classical_method"),
              "cpu": cpu_model(), "load_avg_after": loadavg(), "contenders": table}
    out = args.out or Path(__file__).parent / "results" / f"enhance_speed-{e.degradation}.json"
    return write_result(out, result)


if __name__ == "__main__":
    main()
