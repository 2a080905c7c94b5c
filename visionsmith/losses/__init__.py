"""Standalone loss modules (a paper reference and the tensor shapes in each docstring).

Losses that belong to one method or task still live next to it (``tasks/``, ``methods/``)."""
from .segmentation import IGNORE_INDEX, CrossEntropy2d, DiceLoss, SegLoss

__all__ = ["IGNORE_INDEX", "CrossEntropy2d", "DiceLoss", "SegLoss"]
