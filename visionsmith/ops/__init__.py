"""Tensor operations shared by tasks, losses and metrics: boxes (IoU, NMS, RoIAlign) in plain torch."""
from .boxes import (
    batched_nms,
    box_area,
    box_convert,
    box_giou,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    generalized_box_iou,
    nms,
    remove_small,
    roi_align,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

__all__ = ["batched_nms", "box_area", "box_convert", "box_giou", "box_iou", "clip_boxes", "cxcywh_to_xyxy",
           "generalized_box_iou", "nms", "remove_small", "roi_align", "xywh_to_xyxy", "xyxy_to_cxcywh",
           "xyxy_to_xywh"]
