"""Metric accumulators: ``update`` per batch, ``reduce`` across DDP ranks, ``compute`` a JSON-able dict."""
from .segmentation import SegmentationMetrics

__all__ = ["SegmentationMetrics"]
