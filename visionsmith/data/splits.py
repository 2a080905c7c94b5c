"""Stratified, seeded splits: the same indices every run with the same seed.

Every split draws from its own ``torch.Generator`` seeded from ``(seed, salt)``, never from the
global RNG, so model initialisation or anything else that consumes random numbers before the
data is built cannot move an image from train to val.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import DataError

# Salts keep the val split, the test hold-out and the train_limit subset independent streams.
SALT_VAL, SALT_TEST, SALT_LIMIT = 1, 2, 3


def generator(seed: int, salt: int) -> torch.Generator:
    """A CPU generator for one purpose (``salt``) of one run (``seed``)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + salt) % (2 ** 63))
    return g


def allocate(class_counts: list[int], total: int) -> list[int]:
    """Split ``total`` over classes in proportion to ``class_counts`` (largest remainder; exact sum)."""
    n = sum(class_counts)
    if n == 0 or total <= 0:
        return [0] * len(class_counts)
    quotas = [c * total / n for c in class_counts]
    out = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda k: (out[k] - quotas[k], k))  # largest remainder first
    for k in order[: total - sum(out)]:
        out[k] += 1
    return out


def _pick(labels: torch.Tensor, per_class: list[int], gen: torch.Generator) -> np.ndarray:
    """bool ``[N]`` (numpy): ``per_class[c]`` random images of each class c."""
    # Index bookkeeping in numpy: torch's multi-threaded nonzero costs ~40 ms a call on a busy
    # two-core machine, numpy's ~0.1 ms.  The random draws still come from the torch generator.
    lab = labels.numpy()
    mask = np.zeros(lab.shape[0], dtype=bool)
    for c, k in enumerate(per_class):
        if k > 0:
            members = np.flatnonzero(lab == c)
            mask[members[torch.randperm(members.size, generator=gen)[:k].numpy()]] = True
    return mask


def _indices(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(mask))


def holdout(labels: torch.Tensor, classes: list[str], fraction: float, gen: torch.Generator,
            what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of each class.  labels int64 ``[N]`` -> (rest, held) int64 index tensors.

    The held-out count is ``round(N * fraction)`` spread over classes in proportion to their size,
    but never a class's last image: the rest keeps at least one of each class.  A class with a
    single image cannot be split: that is a ``DataError`` naming the class and ``what`` (the key).
    """
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    if fraction <= 0:
        return torch.arange(labels.shape[0]), torch.zeros(0, dtype=torch.long)
    for c, n in enumerate(counts):
        if n < 2:
            raise DataError(f"{what}={fraction} would leave class {classes[c]!r} with no images on one side "
                            f"(it has {n} image{'s' if n != 1 else ''}); add images of that class or set {what}=0")
    total = max(1, int(labels.shape[0] * fraction + 0.5))
    per_class = [min(k, n - 1) for k, n in zip(allocate(counts, total), counts)]
    held = _pick(labels, per_class, gen)
    return _indices(~held), _indices(held)


def limit(labels: torch.Tensor, classes: list[str], n: int, gen: torch.Generator) -> torch.Tensor:
    """int64 indices of a stratified random subset of exactly ``min(n, N)`` images, in index order."""
    if n >= labels.shape[0]:
        return torch.arange(labels.shape[0])
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    per_class = allocate(counts, n)
    for c, (k, have) in enumerate(zip(per_class, counts)):
        if have > 0 and k == 0:
            raise DataError(f"data.train_limit={n} keeps no training image of class {classes[c]!r}; "
                            f"use at least {len(classes)} (one per class), better 10x that")
    return _indices(_pick(labels, per_class, gen))
