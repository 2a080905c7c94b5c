"""scikit-learn's 8x8 handwritten digits (1,797 images, ships with the package): no files needed."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset

CLASSES = [str(d) for d in range(10)]


def load() -> ImageDataset:
    """All 1,797 digits as one ``ImageDataset``: images uint8 ``[1797, 1, 8, 8]``, labels 0..9.

    The source values are 0..16 (counts of set pixels in 4x4 blocks); they are scaled to 0..255
    so that the images look and normalise like any other 8-bit image.
    """
    from sklearn.datasets import (
        load_digits,  # sklearn import is slow; only pay for it when used
    )

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ImageDataset(torch.from_numpy(images).unsqueeze(1),
                        torch.from_numpy(d.target.astype(np.int64)),
                        list(CLASSES), "digits")
