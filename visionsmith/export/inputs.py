"""The images an export is calibrated and checked on, as [0, 1] pixels the exported graph takes.

Both are preprocessed exactly as evaluation does (``BatchTransform`` in eval mode: resize, channel
matching; its output is [0, 1] pixels, which the model and the exported graph normalise themselves).  The splits and the
targets come from the run's task (``task.build_datasets`` / ``task.export_batch``): labels ``[N]`` for
classification, masks ``[N, S, S]`` (resized nearest with the pixels) for segmentation, clean images
for enhancement (whose inputs are the degraded ones, a crop of each held-out photograph).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import BatchTransform, DataError, decode_size
from ..errors import UserError


@dataclass
class Pixels:
    """``pixels`` float32 ``[N, C, S, S]`` in [0, 1]; ``labels``: the task's targets (int64 ``[N]`` labels,
    ``[N, S, S]`` masks, per-image boxes) or None; ``source`` in words; ``targets``: every target of the
    batch by key (detection's ``boxes`` and ``labels``), or None."""
    pixels: torch.Tensor
    labels: torch.Tensor | None
    source: str
    targets: dict | None = None


def pixel_transform(eval_tf: BatchTransform) -> BatchTransform:
    """``eval_tf`` in eval mode (no augmentation): uint8 ``[N, C, h, w]`` -> [0, 1] pixels ``[N, in_chans, S, S]``."""
    return BatchTransform(False, eval_tf.image_size, eval_tf.in_chans)


def _pick(n_total: int, n: int, seed: int) -> torch.Tensor:
    """``min(n, n_total)`` indices, a seeded random subset in a fixed order (splits may be sorted by class)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def heldout_pixels(cfg, eval_tf: BatchTransform, n: int, seed: int = 0) -> Pixels:
    """Up to ``n`` images of the run's test split (its val split when there is no test split)."""
    from ..tasks import get_task
    if n < 1:
        raise UserError(f"--check must be >= 1 (held-out images to compare PyTorch and ONNX Runtime on), got {n}")
    task = get_task(cfg)
    data = task.build_datasets(cfg.seed)
    split = "test" if len(data.get("test", ())) else "val"
    ds = data.get(split)
    if ds is None or not len(ds):
        raise DataError(f"the run's data {cfg.data.name!r} has no test or val images to check the export on")
    idx = _pick(len(ds), n, seed)
    with torch.no_grad():  # the generator: enhancement's noise, the same for every export of the run
        batch = task.export_batch(ds, idx, pixel_transform(eval_tf), torch.Generator().manual_seed(seed))
    return Pixels(batch["image"], batch[task.target_key], f"{len(idx)} of {len(ds)} {split} images ({ds.name})",
                  {k: v for k, v in batch.items() if k != "image"})


def calibration_pixels(cfg, eval_tf: BatchTransform, n: int, folder: str | Path | None = None,
                       grayscale: bool = False, seed: int = 1) -> Pixels:
    """Up to ``n`` calibration images: the run's training split, or image files under ``folder``
    (searched recursively, decoded like ``predict``: gray when ``grayscale``, else RGB).

    Raises ``ValueError`` for ``n < 1`` and ``DataError`` for a calibration set with no images.
    """
    if n < 1:
        raise UserError(f"--calib must be >= 1 (images to calibrate INT8 activation ranges on), got {n}")
    if folder is not None:
        return _folder_pixels(Path(folder), cfg, eval_tf, n, grayscale, seed)
    from ..tasks import get_task
    task = get_task(cfg)
    ds = task.build_datasets(cfg.seed)["train"]
    if not len(ds):
        raise DataError(f"the run's training split ({cfg.data.name}) has no images to calibrate INT8 on; "
                        "pass a folder of representative images with --calib-data, or use --int8 dynamic")
    idx = _pick(len(ds), n, seed)
    with torch.no_grad():  # the model's own inputs (enhancement: degraded), as evaluation makes them
        px = task.export_batch(ds, idx, pixel_transform(eval_tf), torch.Generator().manual_seed(seed))["image"]
    return Pixels(px, None, f"{len(idx)} of {len(ds)} training images ({ds.name})")


def _folder_pixels(folder: Path, cfg, eval_tf: BatchTransform, n: int, gray: bool, seed: int) -> Pixels:
    from ..data import IMAGE_EXTENSIONS, BadImageError, decode_to_tensor
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    files = [files[i] for i in _pick(len(files), n, seed).tolist()] if files else []
    size = decode_size(cfg.data)
    images = []
    for f in files:
        try:
            images.append(decode_to_tensor(f, size, gray, cfg.data.max_pixels))
        except BadImageError:
            continue  # a calibration set needs representative images, not every file
    if not images:
        raise DataError(f"calibration folder {folder} has no readable images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); point --calib-data at a folder of images like the "
                        "training data")
    with torch.no_grad():
        px = pixel_transform(eval_tf)(torch.stack(images), None)
    return Pixels(px, None, f"{len(images)} images from {folder}")
