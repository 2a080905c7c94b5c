"""Box operations in plain torch: areas, IoU / GIoU, format conversions, NMS, RoIAlign.

Boxes are float ``[N, 4]`` in pixels, ``xyxy`` (x1, y1, x2, y2) unless a name says otherwise, with
x2 >= x1 and y2 >= y1 (a box of zero width is valid and overlaps nothing).  IoU conventions are
torchvision's and pycocotools': continuous coordinates, no "+1" on widths.

Why plain torch: torchvision is optional here.  Its PyPI wheel is a CUDA build that does not
import next to the CPU torch this project installs, so nothing may require it.  When a working
torchvision *is* importable (a CUDA install), ``nms``, ``batched_nms`` and ``roi_align`` hand the
work to its compiled kernels, which compute the same thing; ``_torchvision_ops`` checks that once,
tolerating any exception the import raises (a broken wheel raises RuntimeError, OSError, ...).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FORMATS = ("xyxy", "xywh", "cxcywh")
_NMS_CHUNK = 1024  # rows of the IoU matrix computed at once: bounds the float scratch to 4 MB per 1k boxes


@functools.lru_cache(maxsize=1)
def _torchvision_ops():
    """``torchvision.ops`` when it imports and its compiled ops are registered, else None."""
    try:
        import torchvision.ops as tv_ops
        torch.ops.torchvision.nms  # noqa: B018 -- raises when the C++ extension did not load
        return tv_ops
    except Exception:  # noqa: BLE001 - any failure: missing, CUDA wheel on CPU torch, ABI mismatch
        return None


# ---- areas, IoU, GIoU ---------------------------------------------------------------------------------------

def box_area(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` areas (width * height)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _float(boxes: Tensor) -> Tensor:
    return boxes if boxes.is_floating_point() else boxes.float()


def _iou_and_enclosing(a: Tensor, b: Tensor, hull: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Boxes ``[..., 4]`` broadcast against each other -> (IoU, union, enclosing-box area or None), each ``[...]``.

    Works on the four coordinate planes separately: slicing ``[..., 2:]`` of a broadcast ``[N, M, 2]``
    is ~5x slower on a 3000 x 3000 matrix (strided copies).
    """
    ax1, ay1, ax2, ay2 = _float(a).unbind(-1)
    bx1, by1, bx2, by2 = _float(b).unbind(-1)
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp_(min=0) * \
        (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp_(min=0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    tiny = torch.finfo(union.dtype).tiny  # a 0/0 (two empty boxes) is IoU 0; any real union divides exactly
    iou = inter / union.clamp(min=tiny)
    if not hull:
        return iou, union, None
    enclosing = (torch.max(ax2, bx2) - torch.min(ax1, bx1)).clamp_(min=0) * \
        (torch.max(ay2, by2) - torch.min(ay1, by1)).clamp_(min=0)
    return iou, union, enclosing


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]``."""
    return _iou_and_enclosing(a[:, None, :], b[None, :, :])[0]


def _giou(iou: Tensor, union: Tensor, hull: Tensor) -> Tensor:
    """GIoU = IoU - (hull - union) / hull (Rezatofighi et al., CVPR 2019), in [-1, 1]."""
    return iou - (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU: ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]`` (the DETR matching cost)."""
    return _giou(*_iou_and_enclosing(a[:, None, :], b[None, :, :], hull=True))


def box_giou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise GIoU of matched pairs: ``a [N, 4]``, ``b [N, 4]`` -> ``[N]``; a GIoU loss is ``1 - box_giou``."""
    if a.shape != b.shape:
        raise ValueError(f"box_giou: shapes {tuple(a.shape)} and {tuple(b.shape)} differ; it pairs box i with box i")
    return _giou(*_iou_and_enclosing(a, b, hull=True))


# ---- formats, clipping ----------------------------------------------------------------------------------------

def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (centre x, centre y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (centre x, centre y, width, height) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> (x1, y1, width, height): COCO's ``bbox``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, width, height) -> (x1, y1, x2, y2)."""
    x1, y1, w, h = boxes.unbind(-1)
    return torch.stack([x1, y1, x1 + w, y1 + h], -1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """``[..., 4]`` from one of ``FORMATS`` to another (through xyxy)."""
    for f in (in_fmt, out_fmt):
        if f not in FORMATS:
            raise ValueError(f"box_convert: unknown box format {f!r}; use one of {', '.join(FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    xyxy = {"xyxy": lambda b: b, "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy}[in_fmt](boxes)
    return {"xyxy": lambda b: b, "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh}[out_fmt](xyxy)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """``[..., 4]`` xyxy clipped to an image of ``size = (height, width)``: x in [0, width], y in [0, height]."""
    h, w = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], -1)


def remove_small(boxes: Tensor, min_size: float) -> Tensor:
    """``[N, 4]`` xyxy -> bool ``[N]`` keep mask: width and height both >= ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


# ---- NMS ------------------------------------------------------------------------------------------------------

def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: ``boxes [N, 4]`` xyxy, ``scores [N]`` -> int64 ``[K]`` indices of the
    kept boxes, highest score first.  A box is dropped when its IoU with a kept, higher-scored box is
    > ``iou_threshold`` (torchvision's rule).  Equal scores keep their input order (stable sort).

    Cost: the IoU matrix (O(N^2) time, N^2 bytes of bool, computed ``_NMS_CHUNK`` rows at a time),
    then one numpy row-OR per kept box (O(N K)): ~0.15 s for 3000 boxes on one busy CPU core.
    """
    tv = _torchvision_ops()
    if tv is not None:
        return tv.nms(boxes, scores, float(iou_threshold))
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = _float(boxes)[order]
    over = np.zeros((n, n), bool)  # over[i, j], j > i: box j (in score order) overlaps box i too much
    for s in range(0, n, _NMS_CHUNK):  # the upper triangle only: a box is suppressed by higher-scored ones
        over[s:s + _NMS_CHUNK, s:] = (box_iou(b[s:s + _NMS_CHUNK], b[s:]) > iou_threshold).cpu().numpy()
    removed, keep = np.zeros(n, bool), []
    for i in range(n):  # Python loop, numpy body: one vector OR per kept box
        if not removed[i]:
            keep.append(i)
            removed[i + 1:] |= over[i, i + 1:]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def nms_fixed(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float
              ) -> tuple[Tensor, Tensor]:
    """``batched_nms`` for a batch, in shapes fixed by the input: what a ``torch.export``-traced graph
    (ONNX export) can hold, where ``nms``'s data-dependent loop and output size cannot.

    boxes ``[B, N, 4]``, scores ``[B, N]``, groups int ``[B, N]`` (boxes suppress only boxes of their
    own group), valid bool ``[B, N]`` (an invalid box is neither kept nor suppresses: it was filtered
    out) -> (order int64 ``[B, N]``: each image's indices by descending score; kept bool ``[B, N]`` in
    that order).  The kept boxes in order are exactly ``batched_nms`` on the valid ones.

    The suppression itself is the custom op ``visionsmith::nms_mask``: opaque to ``torch.export``, it
    becomes ONNX's own ``NonMaxSuppression`` in an exported graph (``export/custom_ops.py``) instead of a
    greedy loop unrolled into thousands of nodes.
    """
    order = scores.topk(scores.shape[1], dim=1).indices  # [B, N]; not sort(stable=True): no ONNX function
    return order, torch.ops.visionsmith.nms_mask(boxes, scores, groups, valid, float(iou_threshold)).gather(1, order)


@torch.library.custom_op("visionsmith::nms_mask", mutates_args=())
def nms_mask(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """bool ``[B, N]``: the boxes ``batched_nms`` keeps among each image's valid ones (``nms_fixed``)."""
    kept = torch.zeros_like(valid)
    for i in range(boxes.shape[0]):
        ok = valid[i].nonzero().flatten()
        kept[i, ok[batched_nms(boxes[i, ok], scores[i, ok], groups[i, ok], iou_threshold)]] = True
    return kept


@nms_mask.register_fake
def _(boxes, scores, groups, valid, iou_threshold):
    return torch.empty_like(valid)


_PER_CLASS_ABOVE = 256  # batched_nms: from this many boxes on, one nms per label


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes suppress only boxes of the same label.  ``[N, 4]``, ``[N]``, int ``[N]``
    -> int64 ``[K]`` indices, highest score first.

    The coordinate-offset trick: shift each box by ``label * span`` (span = coordinate range + 1), so
    boxes of different labels never overlap, and run one ``nms``.  Exact while the shifted
    coordinates stay well inside float32's 24-bit mantissa (span * classes << 1.6e7 pixels).
    """
    tv = _torchvision_ops()
    if tv is not None:
        return tv.batched_nms(boxes, scores, labels, float(iou_threshold))
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] > _PER_CLASS_ABOVE:
        # Many boxes: one NMS per label instead.  The offset trick's N x N IoU matrix is mostly pairs of
        # different labels that can never suppress each other; per label it is sum(N_c^2) (10 classes:
        # ~10x less work).  Same result: kept boxes of all labels, by descending score (stable).
        keep = torch.cat([idx[nms(boxes[idx], scores[idx], iou_threshold)]
                          for idx in (torch.nonzero(labels == c).squeeze(1) for c in torch.unique(labels))])
        keep = keep.sort().values  # input order first, so equal scores keep it like the single nms
        return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    b = boxes.double() if boxes.dtype == torch.float64 else boxes.float()  # half would round the offsets
    span = b.max() - b.min() + 1  # torchvision uses max + 1, which lets negative coordinates overlap
    return nms(b + (labels.to(b) * span)[:, None], scores, iou_threshold)


# ---- RoIAlign -------------------------------------------------------------------------------------------------

def roi_align(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """RoIAlign (He et al., Mask R-CNN), torchvision's semantics, in plain torch with ``F.grid_sample``.

    features: ``[B, C, H, W]``; rois: ``[K, 5]`` rows (batch index, x1, y1, x2, y2) in input pixels,
    mapped onto the feature map by ``spatial_scale`` (e.g. 1/16).  -> ``[K, C, oh, ow]``.

    Each output bin averages ``sampling_ratio**2`` bilinear samples at the centres of a regular grid in
    the bin (``sampling_ratio <= 0``: ceil(roi size / output size) per side, per roi).  ``aligned``
    shifts the roi by -0.5 pixel so that pixel centres sit at integer + 0.5 (torchvision's
    ``aligned=True``); without it rois are at least 1x1.  Samples outside [-1, H] x [-1, W] count as 0,
    others clamp to the border pixels: exactly torchvision's ``bilinear_interpolate``.
    """
    tv = _torchvision_ops()
    if tv is not None:
        return tv.roi_align(features, rois.to(features.dtype), output_size, spatial_scale, sampling_ratio, aligned)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: rois must be [K, 5] (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    k, c = rois.shape[0], features.shape[1]
    if k == 0:
        return features.new_zeros(0, c, oh, ow)
    r = rois.to(features.dtype)
    start = r[:, 1:3] * spatial_scale - (0.5 if aligned else 0.0)  # [K, 2] (x, y) on the feature map
    size = r[:, 3:5] * spatial_scale - (0.5 if aligned else 0.0) - start  # [K, 2] (width, height)
    if not aligned:
        size = size.clamp(min=1.0)
    if sampling_ratio > 0:
        grid = torch.full((k, 2), sampling_ratio, dtype=torch.int64, device=r.device)
    else:
        grid = torch.ceil(size / size.new_tensor([ow, oh])).long()  # [K, 2] samples per bin side (x, y)
    batch = r[:, 0].long()
    # One group of rois per (sample grid, image), put back in roi order at the end (``cat_in_order``).
    parts, order = [], []
    for gw, gh in grid.unique(dim=0).tolist():
        for b in batch.unique().tolist():
            idx = ((grid[:, 0] == gw) & (grid[:, 1] == gh) & (batch == b)).nonzero().flatten()
            if not idx.numel():
                continue
            order.append(idx)
            if gw <= 0 or gh <= 0:  # an empty roi: no samples, the bin is 0 (torchvision's count = max(.., 1))
                parts.append(features.new_zeros(len(idx), c, oh, ow))
            else:
                parts.append(_roi_align_grid(features[b:b + 1], start[idx], size[idx], oh, ow, gh, gw))
    return cat_in_order(parts, order)


def cat_in_order(parts: list[Tensor], order: list[Tensor]) -> Tensor:
    """Rows computed group by group (``parts[i]`` holds the rows ``order[i]`` of the whole) -> the whole,
    in row order, by one gather.  Writing each group into a preallocated tensor instead costs a copy of
    that whole tensor per group in the backward pass."""
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


def _bin_weights(pos: Tensor, n: int, bins: int, g: int) -> Tensor:
    """``[..., k, bins * g]`` sample positions along one axis of ``n`` pixels -> ``[..., k, bins, n]``: each bin's
    mean bilinear weight on every pixel, by torchvision's ``bilinear_interpolate`` rule (a sample
    outside [-1, n] weighs nothing; below 0 it sits on pixel 0; at or past n - 1 on pixel n - 1)."""
    valid = ((pos >= -1) & (pos <= n)).to(pos.dtype)
    p = pos.clamp(min=0)
    low = p.floor().long().clamp(max=n - 1)
    end = low >= n - 1
    high = torch.where(end, low, low + 1)
    frac = torch.where(end, torch.zeros_like(p), p - low)
    w = F.one_hot(low, n) * ((1 - frac) * valid)[..., None] + F.one_hot(high, n) * (frac * valid)[..., None]
    return w.reshape(*pos.shape[:-1], bins, g, n).mean(-2)


def _roi_align_grid(feat: Tensor, start: Tensor, size: Tensor, oh: int, ow: int, gh: int, gw: int) -> Tensor:
    """RoIAlign of ``k`` rois of one image with a fixed ``gh x gw`` sample grid per bin.

    feat ``[1, C, H, W]``; start, size ``[k, 2]`` (x, y) in feature pixels -> ``[k, C, oh, ow]``.
    Bilinear sampling, its border rule and the mean over a bin's samples are all separable in y and
    x, so each roi's output is ``Ay @ F @ Ax^T`` with ``Ay [oh, H]`` and ``Ax [ow, W]`` holding the
    bins' mean weights: two small matrix products whose backward is a matrix product too (a
    ``grid_sample`` of the k x oh*gh x ow*gw points and its scatter-add backward cost ~3x more on a CPU
    at Faster R-CNN's 128 regions per image).
    """
    ay, ax = _axis_weights(start, size, feat.shape[-2:], (oh, ow), (gh, gw), feat.dtype)  # [k, oh, H], [k, ow, W]
    t = torch.einsum("kyh,chw->kcyw", ay, feat[0])                   # [k, C, oh, W]
    return torch.einsum("kcyw,kxw->kcyx", t, ax)                     # [k, C, oh, ow]


def _axis_weights(start: Tensor, size: Tensor, hw, out_hw, grid, dtype) -> tuple[Tensor, Tensor]:
    """Rois' (x, y) ``start`` and ``size`` ``[..., k, 2]`` on a ``hw`` feature map -> (``[..., k, oh, H]``,
    ``[..., k, ow, W]``): each output row's and column's mean bilinear weight on every feature row and
    column, with ``grid`` = (gh, gw) samples per bin side, evenly spaced at the centres of its parts."""
    def axis(a: int, n_bins: int, g: int, n: int) -> Tensor:
        steps = (torch.arange(n_bins, device=start.device, dtype=start.dtype)[:, None]
                 + (torch.arange(g, device=start.device, dtype=start.dtype) + 0.5) / g).flatten()
        pos = start[..., a:a + 1] + steps * (size[..., a:a + 1] / n_bins)  # [..., k, n_bins * g]
        return _bin_weights(pos, n, n_bins, g).to(dtype)
    return axis(1, out_hw[0], grid[0], hw[0]), axis(0, out_hw[1], grid[1], hw[1])


def roi_align_fixed(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
                    sampling_ratio: int = 2) -> Tensor:
    """``roi_align`` (``aligned=True``, a fixed ``sampling_ratio``) of R boxes per image, in shapes fixed by
    the input: what a ``torch.export``-traced graph can hold (``roi_align`` groups rois by image and grid).

    features ``[B, C, H, W]``; boxes ``[B, R, 4]`` xyxy in input pixels -> ``[B, R, C, s, s]``.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align_fixed: sampling_ratio must be > 0 (a fixed sample grid)")
    h, w = features.shape[-2:]
    s, g = output_size, sampling_ratio
    start = boxes[..., :2] * spatial_scale - 0.5                                # [B, R, 2] (x, y)
    size = boxes[..., 2:] * spatial_scale - 0.5 - start
    ay, ax = _axis_weights(start, size, (h, w), (s, s), (g, g), features.dtype)  # [B, R, s, H], [B, R, s, W]
    # Two matrix products, not einsum (ONNX Runtime's Einsum kernel took 56% of Faster R-CNN's graph):
    # rows first, one GEMM per image [R * s, H] @ [H, C * W]; then columns, [C, W] @ [W, s] per roi and row.
    b, c, r = features.shape[0], features.shape[1], boxes.shape[1]
    t = ay.reshape(b, r * s, h) @ features.permute(0, 2, 1, 3).reshape(b, h, c * w)   # [B, R * s, C * W]
    t = t.view(b, r, s, c, w) @ ax.transpose(-1, -2)[:, :, None]                       # [B, R, s, C, s]
    return t.permute(0, 1, 3, 2, 4)                                                    # [B, R, C, s, s]
