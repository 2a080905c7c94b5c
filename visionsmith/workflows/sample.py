"""``visionsmith sample RUN --n 64 [--class K] [--steps N] [--guidance W] [--seed S] --out DIR``.

Draws images from a generation run's best weights: ``DIR/grid.png`` (all of them, rows of
``ceil(sqrt(n))``), ``DIR/sample_0000.png``... and ``DIR/samples.json`` (the settings, so the same
command gives the same images: the starting noise comes from one CPU generator seeded ``--seed``).
Every bad argument is a one-line ``UserError`` before anything is drawn.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..models.generators import slerp, walks  # noqa: F401  (slerp: re-exported for callers of this module)
from ..outputs.generation import contact_sheet


@dataclass
class SampleResult:
    out: Path
    images: torch.Tensor  # uint8 [n, C, S, S]
    labels: list[int] | None
    seconds: float
    settings: dict


def load_generator(run_dir):
    """(cfg, model, classes, task) of a generation run; a one-line error for any other run."""
    from ..engine.build import load_trained
    from ..tasks import get_task
    cfg, model, classes, _ = load_trained(run_dir)
    task = get_task(cfg)
    if task.name != "generation":
        raise UserError(f"{run_dir} is a {task.name} run; `visionsmith sample` needs a generation run "
                        "(task: generation, e.g. recipes/diffusion-fashion-mnist.yaml)")
    return cfg, model, classes, task


def check_args(cfg, classes, n: int, klass: int | None, steps: int | None, guidance: float | None) -> None:
    g = cfg.gen
    if n <= 0:
        raise UserError(f"--n {n}: ask for at least one image")
    if klass is not None and not g.conditional:
        raise UserError(f"--class {klass}: this model was trained without classes (gen.conditional=false); "
                        "leave --class out")
    if klass is not None and not 0 <= klass < len(classes):
        raise UserError(f"--class {klass} is out of range; this model knows classes 0..{len(classes) - 1}: "
                        + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
    if cfg.method != "diffusion" and (steps is not None or guidance is not None):
        raise UserError("--steps and --guidance are diffusion settings; this is a "
                        f"{cfg.model.name} run, which draws in one pass")
    if steps is not None and not 1 <= steps <= g.timesteps:
        raise UserError(f"--steps {steps}: the model was trained on a {g.timesteps}-step schedule; use 1..{g.timesteps}")
    if guidance is not None and guidance != 1.0 and not (g.conditional and g.class_dropout > 0):
        raise UserError(f"--guidance {guidance}: classifier-free guidance needs a model trained with class dropout "
                        "(gen.conditional=true, gen.class_dropout > 0); this one was not")
    if guidance is not None and guidance != 1.0 and klass is None:
        raise UserError(f"--guidance {guidance} steers towards a class: give --class K as well")


@torch.no_grad()
def sample(run_dir, n: int = 64, klass: int | None = None, steps: int | None = None, guidance: float | None = None,
           seed: int = 0, out=None, sampler: str | None = None, batch_size: int = 250) -> SampleResult:
    from ..outputs.base import write_atomic
    from ..outputs.enhancement import png_bytes
    cfg, model, classes, task = load_generator(run_dir)
    check_args(cfg, classes, n, klass, steps, guidance)
    g = cfg.gen
    if sampler == "ddpm" and steps is not None:
        raise UserError("--steps applies to DDIM; DDPM always takes the training schedule's steps")
    labels = task.sample_labels(n, len(classes), klass)
    steps = steps or g.steps
    guidance = g.guidance if guidance is None else guidance  # check_args: a weight of its own needs --class
    t0 = time.perf_counter()
    images = task.draw(model, n, labels, steps, seed, batch_size, sampler=sampler, guidance=guidance,
                       progress="sampling")
    secs = time.perf_counter() - t0
    settings = {"run": str(run_dir), "n": n, "class": klass, "seed": seed, "model": cfg.model.name}
    if cfg.method == "diffusion":
        settings.update(sampler=sampler or g.sampler, steps=steps if (sampler or g.sampler) == "ddim" else g.timesteps,
                        guidance=guidance if g.conditional else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "grid.png", png_bytes(contact_sheet(images, pad=2)))
    for i in range(n):
        write_atomic(out / f"sample_{i:04d}.png", png_bytes(images[i].numpy()))
    lab = labels.tolist() if labels is not None else None
    (out / "samples.json").write_text(json.dumps({**settings, "seconds": round(secs, 3), "labels": lab,
                                                  "classes": [classes[k] for k in lab] if lab else None}, indent=1))
    return SampleResult(out, images, lab, secs, settings)


@torch.no_grad()
def interpolate(run_dir, n: int = 8, rows: int = 4, klass: int | None = None, steps: int | None = None,
                seed: int = 0, out=None) -> SampleResult:
    """``rows`` strips of ``n`` images, each walking from one random start to another: the latent z of
    a VAE or GAN, the starting noise x_T of a diffusion model (sampled with deterministic DDIM, so nearby
    noise gives nearby images).  Writes ``DIR/interpolation.png`` and ``DIR/interpolation.json``."""
    from ..outputs.base import write_atomic
    from ..outputs.enhancement import png_bytes
    cfg, model, classes, task = load_generator(run_dir)
    if n < 2 or rows < 1:
        raise UserError(f"--n {n} --rows {rows}: an interpolation needs at least 2 images per row and 1 row")
    check_args(cfg, classes, n, klass, steps, None)
    g = cfg.gen
    diffusion = cfg.method == "diffusion"
    t0 = time.perf_counter()
    images, labels = walks(model, n, rows, [klass if klass is not None else r % len(classes) for r in range(rows)]
                           if g.conditional else None, steps or g.steps, g.guidance, seed)
    secs = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "interpolation.png", png_bytes(contact_sheet(images, cols=n, pad=2)))
    settings = {"run": str(run_dir), "n": n, "rows": rows, "seed": seed, "model": cfg.model.name,
                "space": "x_T (DDIM)" if diffusion else "latent z", "classes": [classes[k] for k in labels] if labels else None}
    (out / "interpolation.json").write_text(json.dumps({**settings, "seconds": round(secs, 3)}, indent=1))
    return SampleResult(out, images, labels, secs, settings)
