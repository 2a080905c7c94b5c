"""Datasets, decoding and batched transforms.

    build_datasets(cfg.data, seed) -> {"train", "val", "test"}: ImageDataset   (uint8 [N, C, H, W])
    BatchTransform(train, image_size, in_chans, augment)(uint8 batch, generator)
        -> float32 [B, in_chans, image_size, image_size] pixels in [0, 1] (the model normalises them)
    load_image(path) -> PIL "RGB"/"L";  image_to_uint8(img, size, grayscale) -> uint8 [C, size, size]

Sources: ``fashion_mnist`` (Debian idx files), ``digits`` (scikit-learn), ``folder``
(root/<class>/...), ``csv`` (path,label).  Folder/csv images are decoded once and cached under
``$VISIONSMITH_HOME/cache``.  Bad files are skipped and listed (``ImageDataset.skipped``), or
raised with ``data.strict``; data that cannot make a classifier is a ``DataError``.
"""
from .build import build_datasets, decode_size
from .dataset import ImageDataset
from .errors import BadImageError, DataError
from .images import (
                     DEFAULT_MAX_PIXELS,
                     IMAGE_EXTENSIONS,
                     decode_to_tensor,
                     image_to_uint8,
                     images_to_tensor,
                     load_image,
)
from .transforms import BatchTransform

__all__ = ["BadImageError", "BatchTransform", "DEFAULT_MAX_PIXELS", "DataError", "IMAGE_EXTENSIONS",
           "ImageDataset", "build_datasets", "decode_size", "decode_to_tensor", "image_to_uint8", "images_to_tensor",
           "load_image"]
