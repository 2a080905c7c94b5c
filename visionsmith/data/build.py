"""``build_datasets``: a ``DataConfig`` -> ``{"train", "val", "test"}`` ``ImageDataset``s.

Order of the splits, each from its own seeded generator (``splits.py``):
  1. the source's own test split (Fashion-MNIST t10k, ``root/test``), else a stratified hold-out
     of ``test_fraction`` (0.2 for digits when 0).  The hold-out uses a fixed seed, *not* the run
     seed, so every run of a dataset is scored on the same test images.
  2. val: the source's ``root/val``, else a stratified ``val_fraction`` of what is left, by seed.
  3. ``train_limit``: a stratified subset of the remaining train images, by seed.  It is applied
     after the val split, so val stays the same while train_limit varies.
An empty val/test (fraction 0 with no such folder) is an ``ImageDataset`` with 0 images.

``labels: false`` (self-supervised pretraining): the source's training images as one pseudo-class,
``train_limit`` applied by seed, and empty val/test: unlabelled data has nothing to score against.
"""
from __future__ import annotations

import torch

from ..config import DataConfig
from . import csv_source, digits, fashion_mnist, folder, splits
from .dataset import ImageDataset
from .errors import DataError

TEST_SEED = 0  # the hold-out test split does not move with the run seed
DIGITS_TEST_FRACTION = 0.2


# Sources whose images come at a fixed size (the arrays in the package or the IDX files).
NATIVE_SIZE = {"fashion_mnist": 28, "digits": 8}


def decode_size(cfg: DataConfig) -> int:
    """The side a run's images are held at before ``BatchTransform`` resizes them to
    ``image_size``: the source's own size (28 for Fashion-MNIST, 8 for digits), else
    ``cache_size or image_size`` (folders, csv, and the segmentation/detection sources).

    ``predict``, ``serve``, ``export`` and calibration decode a file to this side with
    ``image_to_uint8`` and then take the eval ``BatchTransform`` like ``eval`` does, so a PNG of a
    test image gives exactly the probabilities ``eval`` computes for it (one preprocessing path)."""
    return NATIVE_SIZE.get(cfg.name) or cfg.cache_size or cfg.image_size


def _source(cfg: DataConfig, max_pixels: int) -> dict[str, ImageDataset]:
    size = decode_size(cfg)
    if cfg.name == "fashion_mnist":
        return fashion_mnist.load()
    if cfg.name == "digits":
        return {"train": digits.load()}
    if cfg.name == "folder" and not cfg.labels:
        return folder.load_unlabelled(cfg.root, size, cfg.grayscale, cfg.strict, max_pixels)
    if cfg.name == "folder":
        return folder.load(cfg.root, size, cfg.grayscale, cfg.strict, cfg.classes, max_pixels)
    if cfg.name == "csv":
        if not cfg.csv:
            raise DataError("data.csv is not set; point it at a file of `path,label` rows")
        return {"train": csv_source.load(cfg.csv, size, cfg.root, cfg.classes, cfg.grayscale, cfg.strict,
                                         max_pixels)}
    raise DataError(f"data.name {cfg.name!r} is not a dataset; use fashion_mnist, digits, folder or csv")


def _unlabelled(cfg: DataConfig, pool: ImageDataset, seed: int) -> dict[str, ImageDataset]:
    """All of ``pool`` as the pseudo-class ``unlabelled`` (its labels dropped); empty val and test."""
    train = ImageDataset(pool.images, torch.zeros(len(pool), dtype=torch.long), [folder.UNLABELLED],
                         pool.name, pool.paths, list(pool.skipped))
    if cfg.train_limit is not None:
        if cfg.train_limit < 1:
            raise DataError(f"data.train_limit must be >= 1 (or null for all), got {cfg.train_limit}")
        keep = splits.limit(train.labels, train.classes, cfg.train_limit, splits.generator(seed, splits.SALT_LIMIT))
        train = train.subset(keep).renamed(train.name, train.skipped)
    empty = train.subset(torch.zeros(0, dtype=torch.long))
    return {"train": train.renamed(f"{cfg.name}/train", train.skipped),
            "val": empty.renamed(f"{cfg.name}/val", []), "test": empty.renamed(f"{cfg.name}/test", [])}


def build_datasets(cfg: DataConfig, seed: int, *, max_pixels: int | None = None) -> dict[str, ImageDataset]:
    """``{"train", "val", "test"}`` for ``cfg``; the same split for the same ``seed``, every run.

    Images are uint8 ``[N, C, H, W]`` at the source's size (28 for Fashion-MNIST, 8 for digits,
    ``cache_size or image_size`` for folder/csv); ``BatchTransform`` resizes to ``image_size``.
    Bad files are on ``.skipped`` of the split whose files they were (the source's ``train`` pool
    for hold-out splits).  Raises ``DataError`` for data that cannot make a classifier.
    """
    src = _source(cfg, max_pixels or cfg.max_pixels)
    pool = src["train"]
    base = cfg.name
    if not cfg.labels:
        return _unlabelled(cfg, pool, seed)

    if "test" in src:
        test = src["test"]
    else:
        frac = cfg.test_fraction or (DIGITS_TEST_FRACTION if cfg.name == "digits" else 0.0)
        rest, held = splits.holdout(pool.labels, pool.classes, frac,
                                    splits.generator(TEST_SEED, splits.SALT_TEST), "data.test_fraction")
        test = pool.subset(held)
        pool = pool.subset(rest).renamed(pool.name, pool.skipped)

    if "val" in src:
        val, train = src["val"], pool
    else:
        rest, held = splits.holdout(pool.labels, pool.classes, cfg.val_fraction,
                                    splits.generator(seed, splits.SALT_VAL), "data.val_fraction")
        val, train = pool.subset(held), pool.subset(rest).renamed(pool.name, pool.skipped)

    if cfg.train_limit is not None:
        if cfg.train_limit < 1:
            raise DataError(f"data.train_limit must be >= 1 (or null for all), got {cfg.train_limit}")
        keep = splits.limit(train.labels, train.classes, cfg.train_limit,
                            splits.generator(seed, splits.SALT_LIMIT))
        train = train.subset(keep).renamed(train.name, train.skipped)

    return {"train": train.renamed(f"{base}/train", train.skipped),
            "val": val.renamed(f"{base}/val", val.skipped),
            "test": test.renamed(f"{base}/test", test.skipped)}
