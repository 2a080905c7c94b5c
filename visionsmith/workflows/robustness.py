"""Robust accuracy of a run's weights against an attack, over a list of epsilons.

Writes ``robustness.json`` into the run folder: one curve per attack setting (``pgd-linf-20``,
``fgsm-linf``, ...), so running several attacks keeps them all; the report plots every curve.
"""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UserError
from ..methods.adversarial import attack, check_eps

DEFAULT_EPS = "0,1/255,2/255,4/255,8/255"


def parse_eps(text: str | list) -> list[float]:
    """``"0,1/255,0.1"`` (fractions allowed) -> sorted floats, each checked to lie in [0, 1]."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        try:
            v = float(Fraction(s)) if "/" in s else float(s)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"eps {s!r} is not a number (write 0.1 or 8/255)") from None
        out.append(check_eps(v))
    if not out:
        raise UserError("no eps given; pass e.g. --eps 0,1/255,2/255,4/255,8/255")
    return sorted(set(out))


def curve_key(name: str, norm: str, steps: int) -> str:
    return f"{name}-{norm}" if name == "fgsm" else f"{name}-{norm}-{steps}"


def robust_accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float, name: str = "pgd",
                    norm: str = "linf", steps: int = 20, step_size: float | None = None,
                    batch_size: int = 256) -> float:
    """Accuracy of ``model`` (it takes [0, 1] pixels and normalises them itself) on adversarial
    versions of ``pixels`` [N, C, S, S] in [0, 1]."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(pixels), batch_size):
        x, y = pixels[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        x_adv = attack(name, model, x, y, eps, norm, steps, step_size)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(-1) == y).sum())
    return correct / max(len(pixels), 1)


def robustness_run(run_dir, eps=DEFAULT_EPS, name: str = "pgd", norm: str = "linf", steps: int = 20,
                   step_size: float | None = None, images: int = 1000, split: str = "test", which: str = "best",
                   batch_size: int = 256, seed: int = 0) -> dict:
    """Clean and robust accuracy of ``run_dir``'s weights against ``name`` at every eps.

    ``images``: how many images of ``split`` to attack (the first ones, in dataset order); <= 0
    means all.  Returns the curve dict stored under its key in ``robustness.json``.
    """
    from ..engine.evaluate import run_and_split
    from ..engine.runfolder import read_json, write_json
    from ..methods import trains_head

    eps_list = parse_eps(eps)
    if name not in ("pgd", "fgsm"):
        raise UserError(f"unknown attack {name!r}: choose pgd or fgsm")
    if norm not in ("linf", "l2"):
        raise UserError(f"unknown norm {norm!r}: choose linf or l2")
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    run_dir = Path(run_dir)
    cfg, model, _, _, ds, eval_tf, device = run_and_split(run_dir, split, which)
    if not trains_head(cfg):
        raise UserError(f"{run_dir} is a self-supervised pretraining run: it has no trained classifier to attack")
    n = len(ds) if images <= 0 else min(images, len(ds))
    # Pixels exactly as evaluation sees them (resized, channels matched); the model normalises them.
    pixels = torch.cat([eval_tf(ds.images[i:min(i + 1024, n)]) for i in range(0, n, 1024)])
    labels = ds.labels[:n]
    pm = model.to(device).eval()
    for p in pm.parameters():
        p.requires_grad_(False)  # only the input's gradient is needed
    torch.manual_seed(seed)  # random starts: the same numbers on every call
    points, t0 = [], time.perf_counter()
    for e in tqdm(eps_list, desc=f"{name} {norm}", unit="eps", leave=False):
        points.append({"eps": e, "acc": robust_accuracy(pm, pixels, labels, e, name, norm, steps, step_size,
                                                        batch_size)})
    curve = {"attack": name, "norm": norm, "steps": 1 if name == "fgsm" else steps, "step_size": step_size,
             "split": split, "images": n, "weights": which, "seed": seed, "points": points,
             "seconds": round(time.perf_counter() - t0, 1)}
    path = run_dir / "robustness.json"
    all_curves = read_json(path) if path.is_file() else {}
    all_curves[curve_key(name, norm, steps)] = curve
    write_json(path, all_curves)
    return curve
