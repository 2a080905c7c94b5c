"""Sampling speed and quality of a diffusion run: DDIM with few steps against DDPM with every step of
the training schedule, on the same starting noise, in one run.

    python benchmarks/generation_speed.py RUN                      # a diffusion run folder
    python benchmarks/generation_speed.py RUN --n 100 --ddim 10,25,50 --threads 2
    python benchmarks/generation_speed.py RUN --n 500 --ddim 50 --no-ddpm --guidance 1,2,3,4   # a guidance sweep
    python benchmarks/generation_speed.py RUN --n 2000 --ddim 10 --no-ddpm --fid 1000     # and FID (InceptionV3)

Each sampler draws ``--n`` images (the class-balanced requests and the guidance weight of the run's
evaluation) from the same seed; images/s is ``n`` over the wall time.  Each set is scored like the
evaluation (Frechet classifier distance against the test split, k-NN precision/recall, requested-class
accuracy) with the floor at the same ``n``: at small ``n`` every Frechet distance is biased upwards, so
compare the samplers with each other and with that floor, not with the evaluation's 2,000-sample figure.
``--guidance W1,W2,...`` repeats each sampler at those classifier-free guidance weights (conditional
models), which trade variety (recall) for class fidelity.  ``--fid N`` adds FID in InceptionV3 features
(``metrics/inception.py``) of the first N samples against N test images, with its floor.  A VAE or GAN
run has one contender (it draws in one step): its speed and scores, for comparison with a diffusion run.
Results: ``benchmarks/results/generation_speed.json`` (``--out`` for another file).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import env_info, loadavg, write_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a generation run folder (diffusion: the samplers compared; VAE, GAN: scored)")
    p.add_argument("--n", type=int, default=100, help="images per sampler (default 100)")
    p.add_argument("--ddim", default="10,25,50", help="DDIM step counts, comma-separated (default 10,25,50)")
    p.add_argument("--no-ddpm", action="store_true", help="leave out DDPM (all training steps: the slow one)")
    p.add_argument("--guidance", default=None, help="guidance weights, comma-separated (default: the run's)")
    p.add_argument("--fid", type=int, default=0, metavar="N",
                   help="also FID in InceptionV3 features of the first N samples vs N test images (0: off)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = loadavg()

    from visionsmith.engine.build import build_transforms
    from visionsmith.workflows.sample import load_generator
    cfg, model, classes, task = load_generator(args.run)
    diffusion = cfg.method == "diffusion"  # a VAE or GAN draws in one step: one contender, its scores (and --fid)
    g = cfg.gen
    cfg.gen.eval_samples = args.n  # the task's evaluation draws eval_samples: score n images of each sampler
    cfg.gen.fid, cfg.gen.fid_samples = args.fid > 0, args.fid
    data = task.build_datasets(cfg.seed)
    _, eval_tf = build_transforms(cfg)
    samplers = [("ddim", int(s)) for s in args.ddim.split(",")] + ([] if args.no_ddpm else [("ddpm", g.timesteps)])
    samplers = samplers if diffusion else [(cfg.method, 1)]
    weights = [float(w) for w in args.guidance.split(",")] if args.guidance and diffusion else [g.guidance]
    contenders = [(s, k, w) for w in weights for s, k in samplers]
    rows = {}
    print(f"generation_speed: {args.run}, n={args.n}, guidance {weights if g.conditional else None}, "
          f"{args.threads} threads; load average {load0}", flush=True)
    for sampler, steps, w in contenders:
        if diffusion:
            cfg.gen.sampler, cfg.gen.steps, cfg.gen.guidance = sampler, steps, w
        t0 = time.perf_counter()
        m = task.evaluate(model, data["test"], eval_tf, 250, torch.device("cpu"), keep_outputs=True)
        secs = time.perf_counter() - t0
        key = f"{sampler}-{steps}" + (f"-w{w:g}" if len(weights) > 1 else "")
        rows[key] = {"sampler": sampler, "steps": steps, "guidance": w, "img_per_s": m["sample_img_per_s"],
                                      "fd": m["fd"], "fd_floor": m["fd_floor"], "precision": m["precision"],
                                      "recall": m["recall"], "class_acc": m.get("class_acc"), "wall_s": round(secs, 1),
                                      **{k: m[k] for k in ("fid", "fid_floor", "fid_n") if k in m}}
        r = rows[key]
        print(f"  {sampler:<5}{steps:>5} steps  w {w:<4g}{r['img_per_s']:>8.2f} img/s  FD {r['fd']:.3f} (floor {r['fd_floor']:.3f})"
              f"  precision {r['precision']:.3f}  recall {r['recall']:.3f}  class {r['class_acc']}"
              + (f"  FID {r['fid']:.2f} (floor {r['fid_floor']:.2f}, n {r['fid_n']})" if "fid" in r else ""), flush=True)
    for r in rows.values():  # against DDPM at the same guidance weight
        base = next((b for b in rows.values() if b["sampler"] == "ddpm" and b["guidance"] == r["guidance"]), None)
        if base:
            r["speedup_vs_ddpm"] = round(r["img_per_s"] / base["img_per_s"], 2)
    result = {"run": str(args.run), "n": args.n,
              "threads": args.threads, "contenders": rows, **env_info(load0, loadavg())}
    return write_result(args.out or Path(__file__).parent / "results" / "generation_speed.json", result)


if __name__ == "__main__":
    main()
