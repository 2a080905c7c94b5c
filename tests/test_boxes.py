"""visionsmith.ops.boxes against brute-force references written with Python loops."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from visionsmith.ops import boxes as B


@pytest.fixture(autouse=True)
def plain_torch(monkeypatch):
    """Test the plain-torch code even where a working torchvision is installed."""
    monkeypatch.setattr(B, "_torchvision_ops", lambda: None)


def random_boxes(n: int, seed: int, span: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * span / 3 + 0.5
    return torch.cat([xy, xy + wh], 1)


def ref_iou_giou(a, b) -> tuple[float, float]:
    """IoU and GIoU of two xyxy boxes (lists of floats), one pair at a time."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    return iou, iou - (hull - union) / hull


def test_iou_and_giou_match_loops():
    a, b = random_boxes(7, 0), random_boxes(5, 1)
    iou, giou = B.box_iou(a, b), B.generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (7, 5)
    for i in range(7):
        for j in range(5):
            ri, rg = ref_iou_giou(a[i].tolist(), b[j].tolist())
            assert iou[i, j].item() == pytest.approx(ri, abs=1e-6)
            assert giou[i, j].item() == pytest.approx(rg, abs=1e-6)
    pair = B.box_giou(a[:5], b)
    assert pair.shape == (5,)
    assert torch.allclose(pair, giou[:5].diagonal(), atol=1e-6)
    # known values: identical -> 1; disjoint far apart -> GIoU near -1; half overlap
    x = torch.tensor([[0., 0, 10, 10]])
    assert B.box_iou(x, x).item() == 1 and B.box_giou(x, x).item() == 1
    assert B.box_iou(x, torch.tensor([[5., 0, 15, 10]])).item() == pytest.approx(1 / 3)
    assert B.box_giou(x, torch.tensor([[20., 0, 30, 10]])).item() == pytest.approx(-1 / 3)
    assert B.box_area(x).item() == 100
    # integer boxes are promoted; two empty boxes have IoU 0, not NaN
    assert B.box_iou(x.long(), x.long()).dtype == torch.float32
    z = torch.zeros(1, 4)
    assert B.box_iou(z, z).item() == 0 and B.box_giou(z, z).item() == 0
    with pytest.raises(ValueError, match="pairs box i with box i"):
        B.box_giou(a, b)


def test_giou_gradient_is_finite():
    a = random_boxes(4, 2).requires_grad_()
    (1 - B.box_giou(a, random_boxes(4, 3))).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_conversions_clip_and_remove_small():
    xyxy = torch.tensor([[1., 2, 5, 10], [0, 0, 0, 0]])
    assert B.xyxy_to_cxcywh(xyxy).tolist() == [[3, 6, 4, 8], [0, 0, 0, 0]]
    assert B.xyxy_to_xywh(xyxy).tolist() == [[1, 2, 4, 8], [0, 0, 0, 0]]
    for fmt in B.FORMATS:
        for out in B.FORMATS:
            there = B.box_convert(xyxy, "xyxy", fmt)
            assert torch.equal(B.box_convert(B.box_convert(there, fmt, out), out, "xyxy"), xyxy)
    assert torch.equal(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(xyxy)), xyxy)
    assert torch.equal(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy)), xyxy)
    with pytest.raises(ValueError, match="unknown box format 'yxyx'"):
        B.box_convert(xyxy, "yxyx", "xyxy")
    clipped = B.clip_boxes(torch.tensor([[-5., -1, 50, 8], [3, 40, 9, 45]]), (20, 30))  # (height, width)
    assert clipped.tolist() == [[0, 0, 30, 8], [3, 20, 9, 20]]
    keep = B.remove_small(torch.tensor([[0., 0, 2, 2], [0, 0, 1, 5], [0, 0, 5, 0.5]]), 1.0)
    assert keep.tolist() == [True, True, False]


def ref_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Pure-Python greedy NMS: best score first, keep a box unless it overlaps a kept one by IoU > thr."""
    b = boxes.tolist()
    keep = []
    for i in sorted(range(len(b)), key=lambda i: -scores[i].item()):
        if all(ref_iou_giou(b[i], b[k])[0] <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("n, thr, seed", [(1, 0.5, 0), (40, 0.3, 1), (300, 0.5, 2), (300, 0.7, 3)])
def test_nms_equals_greedy_reference(n, thr, seed):
    boxes = random_boxes(n, seed, span=60)  # crowded: many overlaps
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float() / n  # distinct: no ties
    keep = B.nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == ref_nms(boxes, scores, thr)
    assert (scores[keep].diff() < 0).all()  # highest score first


def test_nms_ties_keep_input_order():
    boxes = torch.tensor([[0., 0, 10, 10], [100, 100, 110, 110], [1, 0, 11, 10]])
    assert B.nms(boxes, torch.ones(3), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("n", [200, 700])  # 700: above _PER_CLASS_ABOVE, one nms per label
def test_batched_nms_equals_per_class_nms(n):
    boxes = random_boxes(n, 4, span=50) - 20  # negative coordinates too
    g = torch.Generator().manual_seed(4)
    scores, labels = torch.randperm(n, generator=g).float(), torch.randint(0, 4, (n,), generator=g)
    expect = []
    for c in range(4):
        idx = (labels == c).nonzero().flatten()
        expect += idx[B.nms(boxes[idx], scores[idx], 0.5)].tolist()
    keep = B.batched_nms(boxes, scores, labels, 0.5)
    assert sorted(keep.tolist()) == sorted(expect)
    assert (scores[keep].diff() < 0).all()
    assert len(keep) > len(B.nms(boxes, scores, 0.5))  # classes do not suppress each other


def test_batched_nms_paths_agree_with_ties(monkeypatch):
    # The offset path and the per-label path give the same indices in the same order, equal scores included.
    n = 400
    boxes = random_boxes(n, 7, span=60)
    g = torch.Generator().manual_seed(7)
    scores, labels = torch.randint(0, 20, (n,), generator=g).float(), torch.randint(0, 5, (n,), generator=g)
    per_label = B.batched_nms(boxes, scores, labels, 0.5)
    monkeypatch.setattr(B, "_PER_CLASS_ABOVE", 10**9)
    assert torch.equal(per_label, B.batched_nms(boxes, scores, labels, 0.5))


@pytest.mark.parametrize("b, n, thr", [(1, 1, 0.5), (3, 60, 0.5), (2, 300, 0.7)])
def test_nms_fixed_keeps_what_batched_nms_keeps_per_image(b, n, thr):
    # The traceable NMS of Faster R-CNN's export: per image, its kept boxes in its order are batched_nms's on
    # the valid boxes; invalid boxes neither survive nor suppress.
    g = torch.Generator().manual_seed(n)
    boxes = torch.stack([random_boxes(n, n + i, span=50) for i in range(b)])
    scores, groups = torch.rand(b, n, generator=g), torch.randint(0, 3, (b, n), generator=g)
    valid = torch.rand(b, n, generator=g) > 0.2
    order, kept = B.nms_fixed(boxes, scores, groups, valid, thr)
    assert order.shape == kept.shape == (b, n) and kept.dtype == torch.bool
    for i in range(b):
        ok = valid[i].nonzero().flatten()
        expect = ok[B.batched_nms(boxes[i, ok], scores[i, ok], groups[i, ok], thr)]
        assert order[i][kept[i]].tolist() == expect.tolist()
    assert kept.sum() < valid.sum() or n == 1  # something was suppressed: the test exercised NMS


def test_roi_align_fixed_equals_roi_align_for_every_image():
    feat = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    boxes = ROIS[:, 1:].view(2, 3, 4) * 2  # [B, R, 4]: three rois per image, some partly outside
    out = B.roi_align_fixed(feat, boxes, 3, 0.5, sampling_ratio=2)
    assert out.shape == (2, 3, 3, 3, 3)
    rois = torch.cat([torch.arange(2).repeat_interleave(3)[:, None].float(), boxes.reshape(-1, 4)], 1)
    torch.testing.assert_close(out.reshape(6, 3, 3, 3), B.roi_align(feat, rois, 3, 0.5, 2, True), atol=1e-5, rtol=0)


def ref_bilinear(f: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's ``bilinear_interpolate`` (roi_align_kernel.cpp), one point: f [C, H, W] -> [C]."""
    _, h, w = f.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
            + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1])


def ref_roi_align(feat, rois, oh, ow, scale, ratio, aligned) -> np.ndarray:
    f, out = feat.double().numpy(), np.zeros((len(rois), feat.shape[1], oh, ow))
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / ow, rh / oh
        gh = ratio if ratio > 0 else math.ceil(rh / oh)
        gw = ratio if ratio > 0 else math.ceil(rw / ow)
        for ph in range(oh):
            for pw in range(ow):
                acc = np.zeros(feat.shape[1])
                for iy in range(gh):
                    for ix in range(gw):
                        y = y1 + ph * bh + (iy + 0.5) * bh / gh
                        x = x1 + pw * bw + (ix + 0.5) * bw / gw
                        acc += ref_bilinear(f[int(b)], y, x)
                out[k, :, ph, pw] = acc / max(gh * gw, 1)
    return out


ROIS = torch.tensor([[0, 2.0, 3.0, 14.0, 11.0],     # inside
                     [1, -6.0, -4.0, 8.0, 6.0],     # partly off the top-left
                     [0, 12.0, 8.0, 30.0, 25.0],    # partly off the bottom-right
                     [1, 40.0, 40.0, 50.0, 50.0],   # entirely outside: zeros
                     [0, 5.0, 5.0, 5.5, 5.25],      # smaller than a feature pixel
                     [1, 0.0, 0.0, 18.0, 14.0]])    # the whole map


@pytest.mark.parametrize("scale, ratio, aligned, size", [(1.0, 2, True, 3), (0.5, 2, True, (2, 4)),
                                                          (1.0, 0, True, 2), (0.5, 1, False, 3),
                                                          (1.0, 0, False, (3, 2))])
def test_roi_align_matches_direct_bilinear(scale, ratio, aligned, size):
    feat = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    rois = ROIS if scale == 1.0 else ROIS * torch.tensor([1, 2, 2, 2, 2])
    out = B.roi_align(feat, rois, size, scale, ratio, aligned)
    oh, ow = (size, size) if isinstance(size, int) else size
    assert out.shape == (6, 3, oh, ow) and out.dtype == torch.float32
    ref = ref_roi_align(feat, rois, oh, ow, scale, ratio, aligned)
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-5)
    assert (out[3] == 0).all() and out[0].abs().sum() > 0


def test_roi_align_gradient_reaches_features():
    feat = torch.randn(2, 3, 7, 9, requires_grad=True)
    B.roi_align(feat, ROIS, 2).sum().backward()
    assert feat.grad.abs().sum() > 0


def test_empty_inputs():
    e = torch.zeros(0, 4)
    assert B.box_iou(e, random_boxes(3, 0)).shape == (0, 3)
    assert B.generalized_box_iou(random_boxes(3, 0), e).shape == (3, 0)
    assert B.box_giou(e, e).shape == (0,) and B.box_area(e).shape == (0,)
    assert B.xyxy_to_cxcywh(e).shape == (0, 4) and B.box_convert(e, "xywh", "cxcywh").shape == (0, 4)
    assert B.clip_boxes(e, (5, 5)).shape == (0, 4)
    assert B.remove_small(e, 1).shape == (0,) and B.remove_small(e, 1).dtype == torch.bool
    for keep in (B.nms(e, torch.zeros(0), 0.5), B.batched_nms(e, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)):
        assert keep.shape == (0,) and keep.dtype == torch.int64
    out = B.roi_align(torch.randn(2, 3, 7, 9), torch.zeros(0, 5), (2, 3))
    assert out.shape == (0, 3, 2, 3) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"rois must be \[K, 5\]"):
        B.roi_align(torch.randn(1, 3, 7, 9), torch.zeros(2, 4), 2)


def test_torchvision_probe_tolerates_any_import_error(monkeypatch):
    """A torchvision that raises something other than ImportError on import (the CUDA wheel next to CPU
    torch raises RuntimeError) leaves the plain-torch path in place."""
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchvision":
                raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.undo()  # the real probe, not the autouse stub
    for mod in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    B._torchvision_ops.cache_clear()
    try:
        assert B._torchvision_ops() is None
        assert B.nms(random_boxes(5, 0), torch.rand(5), 0.5).numel() > 0
    finally:
        B._torchvision_ops.cache_clear()
