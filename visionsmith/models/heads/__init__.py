"""Task heads that sit on a backbone's feature pyramid (``feature_info``); one file per task."""
from .segmentation import SEG_HEADS, DeepLabV3PlusDecoder, FPNDecoder, build_seg_head

__all__ = ["SEG_HEADS", "DeepLabV3PlusDecoder", "FPNDecoder", "build_seg_head"]
