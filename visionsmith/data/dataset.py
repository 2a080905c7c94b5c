"""``ImageDataset``: a whole split decoded once into one uint8 tensor.

Small-image datasets fit in memory many times over (Fashion-MNIST's 70k images are 55 MB), so
there is no per-item ``__getitem__`` decode and no worker processes: the engine indexes the
tensor with a batch of indices and augments the whole batch at once (``BatchTransform``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """One split.

    images:  uint8 ``[N, C, H, W]``, C in {1, 3}, one H, W for all images.
    labels:  int64 ``[N]`` with values in ``[0, len(classes))``.
    classes: class names, index = label.
    name:    e.g. ``"fashion_mnist/train"``.
    paths:   the source file of each image (folder/csv sources), else None.
    skipped: ``(path, reason)`` of each bad file left out while building this split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    paths: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"{self.name}: images must be uint8 [N, C in (1, 3), H, W], "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: labels must be int64 [{self.images.shape[0]}], "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {len(self.labels)} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> torch.Tensor:
        """int64 ``[num_classes]``: images per class."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def subset(self, idx: torch.Tensor, name: str | None = None) -> "ImageDataset":
        """The images at ``idx`` (int64 ``[M]`` or bool ``[N]``), in that order.

        ``skipped`` is not carried over: it describes the files the source dropped, and copying it
        into every split would count each bad file several times.
        """
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes),
                            name or self.name, paths)

    def renamed(self, name: str, skipped: list[tuple[str, str]] | None = None) -> "ImageDataset":
        """The same tensors under another name (and optionally another skipped list); no copy."""
        return ImageDataset(self.images, self.labels, self.classes, name, self.paths,
                            list(self.skipped if skipped is None else skipped))
