"""ONNX functions for visionsmith's own custom ops, handed to ``torch.onnx.export(custom_translation_table=...)``.

``visionsmith::nms_mask`` (``ops/boxes.py``, Faster R-CNN's proposal NMS in fixed shapes) becomes one
``NonMaxSuppression`` node, ONNX's own greedy NMS (a box is dropped when its IoU with a kept,
higher-scored box exceeds the threshold: the rule of ``ops.boxes.nms``).  Groups are kept apart by
``batched_nms``'s coordinate offset; invalid boxes get a score of -inf, under the score threshold.
Export parity (``outputs/detection.py``) checks the result against PyTorch on held-out images.
"""
from __future__ import annotations

import torch

FLOAT_LOWEST = -3.4028234663852886e38


def _nms_mask(boxes, scores, groups, valid, iou_threshold: float):
    """boxes [B, N, 4], scores [B, N], groups int [B, N], valid bool [B, N] -> bool [B, N] (kept)."""
    from onnx import TensorProto
    from onnxscript.onnx_opset import opset18 as op
    b = op.Cast(boxes, to=TensorProto.FLOAT)
    span = op.Add(op.Sub(op.ReduceMax(b, keepdims=0), op.ReduceMin(b, keepdims=0)), op.Constant(value_float=1.0))
    shifted = op.Add(b, op.Unsqueeze(op.Mul(op.Cast(groups, to=TensorProto.FLOAT), span), [2]))        # [B, N, 4]
    neg_inf = op.Constant(value_float=float("-inf"))
    s = op.Unsqueeze(op.Where(valid, op.Cast(scores, to=TensorProto.FLOAT), neg_inf), [1])            # [B, 1, N]
    n = op.Shape(scores, start=1, end=2)                                                       # [1]: N
    sel = op.NonMaxSuppression(shifted, s, n, op.Constant(value_float=float(iou_threshold)),
                               op.Constant(value_float=FLOAT_LOWEST))                          # [S, 3]
    idx = op.Gather(sel, op.Constant(value_ints=[0, 2]), axis=1)                               # [S, 2]: image, box
    ones = op.Expand(op.Constant(value_int=1), op.Shape(sel, start=0, end=1))                  # [S]
    zeros = op.Expand(op.Constant(value_int=0), op.Shape(scores))                              # [B, N]
    return op.Cast(op.ScatterND(zeros, idx, ones), to=TensorProto.BOOL)


def translation_table() -> dict:
    """``{op overload: ONNX function}`` for every custom op of ours (importing ``ops.boxes`` registers them)."""
    from ..ops import boxes  # noqa: F401 - defines torch.ops.visionsmith.*
    return {torch.ops.visionsmith.nms_mask.default: _nms_mask}
