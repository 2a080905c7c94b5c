"""Train/test leak check: images whose content is in the training split and in val or test.

    leaks = find_leaks(data)    # data: {"train", "val", "test"} ImageDatasets
    leaks["test"]               # {"count": 3, "of": 10000, "examples": [{"image": ..., "train": ...}]}

A test image that is also a training image makes the test score optimistic; a copied file, a
symbolic link walked twice, or a dataset that ships duplicates all cause it.  Content means the
decoded ``uint8`` pixels as the run holds them (``decode_size``), so two files that differ only in
encoding (PNG vs lossless WebP, metadata) count as one image.  Checking costs one hash per image
(70,000 Fashion-MNIST images: well under a second).
"""
from __future__ import annotations

import hashlib

from .images import printable_path

MAX_EXAMPLES = 5


def _digest(images, i: int) -> bytes:
    a = images[i].numpy()  # uint8 [C, H, W]
    return hashlib.blake2b(a.tobytes() + repr(a.shape).encode(), digest_size=16).digest()


def _where(ds, i: int) -> str:
    """A file path when the dataset has one, else the split's index (Fashion-MNIST arrays)."""
    return printable_path(ds.paths[i]) if ds.paths is not None else f"{ds.name}[{i}]"


def find_leaks(data: dict, max_examples: int = MAX_EXAMPLES) -> dict:
    """For "val" and "test" (when present and non-empty): how many of their images have identical
    pixels to a training image, of how many, with up to ``max_examples`` pairs.  ``data`` holds
    ``ImageDataset``s or the segmentation/detection datasets (anything with ``images`` and ``paths``)."""
    train = data.get("train")
    if train is None or not len(train):
        return {}
    seen: dict[bytes, int] = {}
    for i in range(len(train)):
        seen.setdefault(_digest(train.images, i), i)
    out = {}
    for split in ("val", "test"):
        ds = data.get(split)
        if ds is None or not len(ds):
            continue
        hits = [(i, seen[h]) for i in range(len(ds)) if (h := _digest(ds.images, i)) in seen]
        out[split] = {"count": len(hits), "of": len(ds),
                      "examples": [{"image": _where(ds, i), "train": _where(train, j)} for i, j in hits[:max_examples]]}
    return out


def leak_warning(leaks: dict) -> str | None:
    """One line for the console when test images are also training images, else None."""
    t = leaks.get("test") or {}
    if not t.get("count"):
        return None
    ex = t["examples"][0]
    return (f"warning: {t['count']} of {t['of']} test images have the same pixels as a training image "
            f"(e.g. {ex['image']} = {ex['train']}): the test score is optimistic; remove the duplicates "
            "from the data (run.json data.leaks lists examples)")
