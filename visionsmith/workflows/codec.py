"""``visionsmith compress`` / ``decompress``: image files to and from a learned codec's bitstream.

    visionsmith compress RUN photo.png -o photo.vsic --level 2   # writes the file, prints bpp and PSNR
    visionsmith decompress RUN photo.vsic -o photo.png           # the decoder's image, bit for bit

The image is read like every visionsmith input (``load_image``: EXIF orientation, alpha composited
on white, 16-bit scaled to 8 bits, grey made RGB), and each such change is reported as a note.
``compress`` decodes its own file once more before it reports, so the PSNR it prints is what
``decompress`` will give.  The file format is ``ops/bitstream.py``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError


@dataclass
class Compressed:
    path: str  # the file written
    width: int
    height: int
    level: int  # the rate level (0: fewest bits)
    lmbda: float
    bytes: int
    bpp: float
    psnr: float
    seconds: float  # encoding alone
    notes: list[str] = field(default_factory=list)


def _codec_run(run_dir, command: str):
    """(task, model) of a compression run in float32 on the CPU, or a UserError that says what to use."""
    from ..engine.build import load_trained
    from ..tasks import get_task
    cfg, model, _, _ = load_trained(run_dir)
    task = get_task(cfg)
    if task.name != "compression":
        raise UserError(f"{run_dir} is a {task.name} run; `visionsmith {command}` needs a learned-compression run "
                        "(task: compression, e.g. recipes/compress-hyperprior.yaml)")
    return task, model.float().eval()


@torch.no_grad()
def compress(run_dir, image, out, level: int | None = None) -> Compressed:
    """Code ``image`` (any size) with the run's codec into the file ``out`` at rate ``level`` (None: the
    highest, the best quality the model has)."""
    from ..data import BadImageError, load_image
    from ..data.images import decode_notes, pil_to_uint8
    from ..metrics.enhancement import psnr
    from ..outputs.base import write_atomic
    task, model = _codec_run(run_dir, "compress")
    level = model.levels - 1 if level is None else level
    if not 0 <= level < model.levels:
        lams = ", ".join(f"{k}: lmbda {v:g}" for k, v in enumerate(model.lmbdas))
        raise UserError(f"--level {level}: this model has {model.levels} rate level(s) ({lams})")
    try:
        img = load_image(image, grayscale=model.in_chans == 1)
    except BadImageError as e:
        raise UserError(f"{image}: {e.reason}") from None
    u8 = pil_to_uint8(img, model.in_chans)  # [C, H, W]
    t0 = time.perf_counter()
    data = task.encode(model, u8, level)
    seconds = time.perf_counter() - t0
    dec, _ = task.decode(model, data)
    write_atomic(Path(out), data)
    w, h = img.size
    return Compressed(str(out), w, h, level, model.lmbdas[level], len(data), len(data) * 8 / (w * h), psnr(dec, u8),
                      seconds, decode_notes(image, model.in_chans))


@torch.no_grad()
def decompress(run_dir, file, out) -> tuple[int, int, float]:
    """Decode ``file`` (written by ``compress`` with the same run) into the PNG ``out``: (width, height, seconds)."""
    from ..ops.bitstream import BitstreamError
    from ..outputs.base import write_atomic
    from ..outputs.enhancement import png_bytes
    task, model = _codec_run(run_dir, "decompress")
    try:
        data = Path(file).read_bytes()
    except OSError as e:
        raise UserError(f"{file}: cannot read it ({e.strerror or e})") from None
    t0 = time.perf_counter()
    try:
        u8, _ = task.decode(model, data)
    except BitstreamError as e:
        raise UserError(f"{file}: {e}") from None
    seconds = time.perf_counter() - t0
    write_atomic(Path(out), png_bytes(u8.numpy()))
    return int(u8.shape[2]), int(u8.shape[1]), seconds
