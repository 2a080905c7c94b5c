"""``visionsmith enhance RUN IMAGE_OR_FOLDER... --out DIR``: restore image files with an enhancement run.

Each image is decoded like every other visionsmith input (``load_image``: EXIF orientation, alpha on
white, 16-bit scaled to 8 bits), run through the network whole or tile by tile
(``EnhancementTask.run_image``: tiled and whole outputs agree), and written as an 8-bit PNG
``DIR/<name>.png`` (the input's size, times the scale for super-resolution).  ``DIR/enhanced.json``
lists every output, every note (a grey image given to a colour model, an alpha channel, 16 bits) and
every skipped file with its reason; a bad file never stops the others.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError


@dataclass
class Enhanced:
    path: str  # the input, printable
    out: str  # the PNG written
    size_in: tuple[int, int]  # (width, height)
    size_out: tuple[int, int]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"path": self.path, "out": self.out, "size_in": list(self.size_in), "size_out": list(self.size_out),
                "seconds": round(self.seconds, 3), "notes": self.notes}


@dataclass
class EnhanceResult:
    out: Path
    images: list[Enhanced] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def enhance(run_dir, inputs, out, tile: int | None = None) -> EnhanceResult:
    """Restore every image file in ``inputs`` (folders searched recursively) into ``out``."""
    from ..data import BadImageError, load_image
    from ..data.folder import list_image_inputs
    from ..data.images import decode_notes, pil_to_uint8, printable_path
    from ..engine.build import load_trained
    from ..metrics.enhancement import to_u8
    from ..outputs.base import write_atomic
    from ..outputs.enhancement import png_bytes
    from ..tasks import get_task
    cfg, model, _, _ = load_trained(run_dir)
    task = get_task(cfg)
    if task.name != "enhancement":
        raise UserError(f"{run_dir} is a {task.name} run; `visionsmith enhance` needs an enhancement run "
                        f"(task: enhancement); use `visionsmith predict {run_dir} ...` for this one")
    if tile is not None:
        if tile < 0:
            raise UserError(f"--tile must be >= 0 (0: whole images), got {tile}")
        cfg.enhance.tile = tile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = EnhanceResult(out)
    files, odd = list_image_inputs(inputs)
    res.bad += [(printable_path(p), why) for p, why in odd]
    c = cfg.model.in_chans
    used: set[str] = set()
    for f in files:
        shown = printable_path(f)
        try:
            img = load_image(f, grayscale=c == 1, max_pixels=cfg.data.max_pixels)
        except BadImageError as e:
            res.bad.append((shown, e.reason))
            continue
        w, h = img.size
        if (why := task.too_small(model, w, h)) is not None:
            res.bad.append((shown, why))
            continue
        t0 = time.perf_counter()
        x = pil_to_uint8(img, c).unsqueeze(0).float() / 255  # [1, C, H, W]
        y = to_u8(task.run_image(model, x)[0])  # uint8 [C, sH, sW]
        name, i = Path(f).stem or "image", 1
        while name.lower() in used:
            i, name = i + 1, f"{Path(f).stem}-{i + 1}"
        used.add(name.lower())
        dest = out / f"{name}.png"
        write_atomic(dest, png_bytes(y.numpy()))
        res.images.append(Enhanced(shown, str(dest), (w, h), (int(y.shape[2]), int(y.shape[1])),
                                   time.perf_counter() - t0, decode_notes(f, c)))
    body = {"model": str(run_dir), "task": task.name, **task.postprocess_settings(),
            "images": [e.as_json() for e in res.images], "bad": [{"path": p, "reason": r} for p, r in res.bad]}
    write_atomic(out / "enhanced.json", json.dumps(body, indent=2).encode())
    return res
