"""Fashion-MNIST from the Debian package's idx ``.gz`` files (verified by sha256 in ``assets``).

idx format (big-endian): a magic number ``0x00000803`` (images, 3 dims) or ``0x00000801``
(labels, 1 dim), then one uint32 per dimension, then the uint8 data.
"""
from __future__ import annotations

import gzip

import numpy as np
import torch

from .. import assets
from . import cache
from .dataset import ImageDataset
from .errors import DataError

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_MAGIC_IMAGES, _MAGIC_LABELS = 0x803, 0x801


def read_idx(path, magic: int, shape_tail: tuple[int, ...]) -> np.ndarray:
    """The uint8 array stored in an idx ``.gz`` file, after checking its magic number and sizes."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read as gzip ({e}); reinstall dataset-fashion-mnist") from None
    ndim = len(shape_tail) + 1
    head = 4 + 4 * ndim
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an idx file with magic {magic:#010x}; reinstall dataset-fashion-mnist")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != shape_tail or len(raw) != head + int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} but holds {len(raw) - head} bytes of data; "
                        "the file is damaged, reinstall dataset-fashion-mnist")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _resolve(name: str):
    try:
        return assets.resolve(name)
    except assets.AssetError as e:
        raise DataError(str(e)) from None


def load_split(split: str) -> ImageDataset:
    """``split`` in {"train", "test"} -> ``ImageDataset`` with images uint8 ``[N, 1, 28, 28]``."""
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    images = read_idx(_resolve(f"fashion-mnist-{split}-images"), _MAGIC_IMAGES, (28, 28))
    labels = read_idx(_resolve(f"fashion-mnist-{split}-labels"), _MAGIC_LABELS, ())
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels; "
                        "reinstall dataset-fashion-mnist")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"Fashion-MNIST {split}: label {int(labels.max())} is outside 0..9")
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)),
                        list(CLASSES), f"fashion_mnist/{split}")


def load(use_cache: bool = True) -> dict[str, ImageDataset]:
    """``{"train": 60000 images, "test": 10000 images}``, images uint8 ``[N, 1, 28, 28]``.

    Gunzipping and checking the idx files takes ~0.4 s; the parsed tensors are kept in
    ``$VISIONSMITH_HOME/cache`` (keyed by the verified files' paths, sizes and mtimes) and load
    from there in ~0.04 s.  The assets are still resolved and hash-checked every time.
    """
    files = [str(_resolve(f"fashion-mnist-{s}-{k}")) for s in ("train", "test") for k in ("images", "labels")]
    path = cache.cache_dir() / f"fashion_mnist-{cache.cache_key(files, 28, True, 0)}.pt"
    blob = cache.read_blob(path) if use_cache else None
    try:
        if blob is not None:
            out = {s: ImageDataset(blob[f"{s}_images"], blob[f"{s}_labels"], list(CLASSES), f"fashion_mnist/{s}")
                   for s in ("train", "test")}
            cache.stats["cache_hits"] += 1
            return out
    except (KeyError, ValueError):
        pass  # a cache file of the wrong shape: parse again and overwrite it
    out = {"train": load_split("train"), "test": load_split("test")}
    if use_cache:
        cache.write_blob(path, {f"{s}_{k}": getattr(out[s], k) for s in out for k in ("images", "labels")})
    return out
