"""Labelled image files (from a folder tree or a CSV) -> one decoded ``ImageDataset``."""
from __future__ import annotations

import torch

from .cache import decode_files
from .dataset import ImageDataset
from .errors import DataError
from .images import DEFAULT_MAX_PIXELS


def dataset_from_files(items: list[tuple[str, int]], classes: list[str], name: str, size: int,
                       grayscale: bool, strict: bool, skipped: list[tuple[str, str]] = (),
                       require_all_classes: bool = True, where: str = "",
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """Decode ``items`` = ``[(path, label), ...]`` (cached) into images uint8 ``[N, C, size, size]``.

    ``skipped`` holds files the caller already rejected (e.g. non-image extensions); the files
    that fail to decode are added to it.  With ``require_all_classes`` a class left without a
    usable image is a ``DataError`` (a classifier cannot learn a class it never sees).
    """
    label_of = dict(items)
    images, kept, bad = decode_files(list(label_of), size, grayscale, strict, max_pixels,
                                     desc=f"decoding {name}")
    skipped = list(skipped) + bad
    labels = torch.tensor([label_of[p] for p in kept], dtype=torch.long)
    if len(kept) == 0:
        reason = f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise DataError(f"no usable images in {where or name} ({len(skipped)} files skipped{reason})")
    if require_all_classes:
        counts = torch.bincount(labels, minlength=len(classes)).tolist()
        for c, n in enumerate(counts):
            if n == 0:
                bad_here = [r for p, r in skipped if label_of.get(p) == c]
                why = f" ({len(bad_here)} skipped, e.g. {bad_here[0]})" if bad_here else ""
                raise DataError(f"class {classes[c]!r} has no usable images in {where or name}{why}; "
                                f"add images of that class or remove it")
    return ImageDataset(images, labels, list(classes), name, kept, skipped)
