"""Object-detection metrics: COCO box AP / AR through pycocotools, plus the mean IoU of matched boxes.

The accumulator keeps every image's predictions and ground truth (numpy, on the CPU) and runs
``COCOeval`` once in ``compute``: COCO AP is not a sum over batches, so ranks and batches combine
by concatenating images (``reduce`` all-gathers them), not by averaging numbers.  The COCO
ground-truth and result structures are built in memory; pycocotools' printing is swallowed.

Conventions:
- Boxes are xyxy pixels; labels are 0-based indices into ``classes``.  The COCO category id of
  class index ``k`` is ``k + 1`` (COCO ids start at 1), in ``compute`` and in ``to_coco_results``.
  A dataset whose index 0 is ``background`` (the COCO/VOC/YOLO loaders') simply has no box of it:
  that class's AP is ``None`` and it takes no part in the means.
- ``map`` is AP averaged over IoU 0.50:0.05:0.95, ``map50`` / ``map75`` at one IoU, ``ar100`` the
  recall with at most 100 detections per image, all areas; COCOeval keeps only the 100 highest
  scored predictions of an image.  A prediction matches at IoU >= the threshold (COCO's rule: IoU
  0.6 exactly still counts at 0.60).  Precision is COCO's 101-point interpolated curve.
- A class without ground truth has no AP (``None`` in ``per_class_ap``); its predictions count
  nowhere (COCOeval evaluates per category).  Images without ground truth are valid negatives:
  their predictions are false positives of their classes.
- No NaN reaches the output: with no ground truth at all (or no matched box for
  ``mean_iou_matched``) the summary numbers are 0.0, as in ``SegmentationMetrics``.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..ops.boxes import box_iou

__all__ = ["RECALL_POINTS", "DetectionMetric", "match_iou", "to_coco_results"]

MATCH_IOU = 0.5  # the IoU a prediction needs to count as matched in ``mean_iou_matched``
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recall points 0, 0.01, ..., 1 (``pr_curves``)


def _np(x, dtype) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def _image(d: dict, k: int | None, what: str, with_scores: bool) -> dict:
    """One image's dict -> numpy ``{"boxes" float64 [M, 4], "labels" int64 [M], ["scores" float64 [M]]}``."""
    boxes = _np(d["boxes"], np.float64).reshape(-1, 4)
    labels = _np(d["labels"], np.int64).reshape(-1)
    out = {"boxes": boxes, "labels": labels}
    if with_scores:
        out["scores"] = _np(d["scores"], np.float64).reshape(-1)
    if any(len(v) != len(boxes) for v in out.values()):
        raise ValueError(f"DetectionMetric: {what} holds {len(boxes)} boxes but "
                         f"{', '.join(f'{len(v)} {key}' for key, v in out.items() if key != 'boxes')}")
    if labels.size and (labels.min() < 0 or (k is not None and labels.max() >= k)):
        bad = int(labels.min() if labels.min() < 0 else labels.max())
        raise ValueError(f"DetectionMetric: {what} has label {bad}, not a class index"
                         + (f" 0..{k - 1}" if k is not None else ""))
    return out


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


def to_coco_results(preds: Sequence[dict], image_ids: Sequence[int]) -> list[dict]:
    """Predictions (per image ``{"boxes" [M, 4] xyxy, "scores" [M], "labels" [M]}``) -> COCO results:
    ``[{"image_id", "category_id" (= label + 1), "bbox" [x, y, w, h], "score"}, ...]``, JSON-ready."""
    if len(preds) != len(image_ids):
        raise ValueError(f"to_coco_results: {len(preds)} predictions for {len(image_ids)} image ids")
    out = []
    for p, image_id in zip(preds, image_ids):
        p = _image(p, None, f"image {image_id}", True)
        for box, score, label in zip(_xywh(p["boxes"]).tolist(), p["scores"].tolist(), p["labels"].tolist()):
            out.append({"image_id": int(image_id), "category_id": label + 1, "bbox": box, "score": score})
    return out


def match_iou(pred: dict, target: dict, threshold: float = MATCH_IOU) -> list[float]:
    """IoUs of the predictions of one image matched to its ground truth: per class, predictions in
    score order (ties: input order) each take the unmatched ground-truth box they overlap most, if
    that IoU is >= ``threshold``.  Numpy dicts as ``_image`` makes them."""
    out = []
    for c in np.unique(pred["labels"]):
        p, t = pred["labels"] == c, target["labels"] == c
        if not t.any():
            continue
        iou = box_iou(torch.from_numpy(pred["boxes"][p]), torch.from_numpy(target["boxes"][t])).numpy()
        free = np.ones(iou.shape[1], bool)
        for i in np.argsort(-pred["scores"][p], kind="stable"):
            row = np.where(free, iou[i], -1.0)
            j = int(row.argmax())
            if row[j] >= threshold:
                free[j] = False
                out.append(float(row[j]))
    return out


class DetectionMetric:
    """Accumulator: ``update`` per batch, ``reduce`` across ranks once, then ``compute``.

        m = DetectionMetric(classes)
        m.update([{"boxes": b, "scores": s, "labels": l}, ...], [{"boxes": tb, "labels": tl}, ...])
        m.reduce()                            # every rank; a no-op without torch.distributed
        m.compute()["map"]

    ``images`` is the local list of ``(prediction, target)`` numpy dicts; ``reduce`` keeps the
    gathered list aside (calling it twice does not double-count) until the next ``update``/``reset``.
    """

    def __init__(self, classes: Sequence[str]):
        if not classes:
            raise ValueError("DetectionMetric: needs at least one class")
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        self.images: list[tuple[dict, dict]] = []
        self._gathered: list[tuple[dict, dict]] | None = None

    def update(self, preds: Sequence[dict], targets: Sequence[dict]) -> None:
        """Add images: ``preds[i]`` {"boxes" float [M, 4] xyxy pixels, "scores" [M], "labels" int [M]},
        ``targets[i]`` {"boxes" [G, 4], "labels" [G]}; labels are 0-based indices into ``classes``."""
        if len(preds) != len(targets):
            raise ValueError(f"DetectionMetric: {len(preds)} predictions for {len(targets)} targets")
        k, first = len(self.classes), len(self.images)
        for i, (p, t) in enumerate(zip(preds, targets)):
            self.images.append((_image(p, k, f"prediction {first + i}", True),
                                _image(t, k, f"target {first + i}", False)))
        self._gathered = None

    def reduce(self, group=None) -> None:
        """All-gather every rank's images (``all_gather_object``, rank order) when a process group is
        initialised; a no-op otherwise.  A collective: every rank of ``group`` must call it."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        parts: list = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, self.images, group=group)
        self._gathered = [im for part in parts for im in part]

    def compute(self) -> dict:
        """``map``, ``map50``, ``map75``, ``ar100``, ``mean_iou_matched`` (floats), ``per_class_ap``
        (float or None per class), ``classes``, ``n`` (images), ``n_matched`` (boxes in the mean IoU)."""
        images = self.images if self._gathered is None else self._gathered
        ious = [v for p, t in images for v in match_iou(p, t)]
        out = {"map": 0.0, "map50": 0.0, "map75": 0.0, "ar100": 0.0, "per_class_ap": [None] * len(self.classes),
               "mean_iou_matched": float(np.mean(ious)) if ious else 0.0, "n_matched": len(ious),
               "classes": list(self.classes), "n": len(images)}
        if not any(len(t["boxes"]) for _, t in images):
            return out
        stats, precision = self._cocoeval(images)
        out.update(map=stats[0], map50=stats[1], map75=stats[2], ar100=stats[8])
        for k in range(len(self.classes)):
            p = precision[:, :, k, 0, -1]  # [IoU thresholds, recall points] at area "all", 100 detections
            out["per_class_ap"][k] = float(p[p > -1].mean()) if (p > -1).any() else None
        return out

    def pr_curves(self) -> dict:
        """Per-class precision-recall curves at IoU 0.5, from the same COCOeval run as ``compute``.

        -> numpy ``{"recall" [101] (``RECALL_POINTS``), "precision" [K, 101] (COCO's interpolated
        precision at IoU 0.5, area all, 100 detections; -1 for a class without ground truth),
        "ap" [K] (AP averaged over IoU .50:.95, as ``per_class_ap``; -1 without ground truth),
        "ap50" [K] (AP at IoU 0.5: the mean of that curve; -1 likewise), "n_gt" [K] (ground-truth
        boxes per class)}``.  With no ground truth at all every curve and AP is -1."""
        images = self.images if self._gathered is None else self._gathered
        k = len(self.classes)
        n_gt = np.zeros(k, np.int64)
        for _, t in images:
            n_gt += np.bincount(t["labels"], minlength=k)[:k]
        out = {"recall": RECALL_POINTS.copy(), "precision": np.full((k, len(RECALL_POINTS)), -1.0),
               "ap": np.full(k, -1.0), "ap50": np.full(k, -1.0), "n_gt": n_gt}
        if not n_gt.any():
            return out
        _, precision = self._cocoeval(images)
        p = precision[:, :, :, 0, -1]  # [IoU thresholds, recall points, K] at area "all", 100 detections
        out["precision"] = np.ascontiguousarray(p[0].T.astype(np.float64))  # IoU 0.50 is threshold 0
        for c in range(k):
            if (p[:, :, c] > -1).any():
                out["ap"][c] = float(p[:, :, c][p[:, :, c] > -1].mean())
            if (p[0, :, c] > -1).any():
                out["ap50"][c] = float(p[0, :, c][p[0, :, c] > -1].mean())
        return out

    def _cocoeval(self, images: list[tuple[dict, dict]]) -> tuple[list[float], np.ndarray]:
        """Run COCOeval on in-memory structures -> (12 summary stats with -1 -> 0.0, precision [T, R, K, A, M])."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        cats = [{"id": k + 1, "name": c} for k, c in enumerate(self.classes)]
        ids = [{"id": i + 1} for i in range(len(images))]
        gt_anns, dt_anns = [], []
        for i, (p, t) in enumerate(images):
            for anns, d, scores in ((gt_anns, t, None), (dt_anns, p, p["scores"])):
                for j, (box, label) in enumerate(zip(_xywh(d["boxes"]).tolist(), d["labels"].tolist())):
                    a = {"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                    if scores is not None:
                        a["score"] = float(scores[j])
                    anns.append(a)
        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = COCO(), COCO()  # built by hand: COCO.loadRes fails on an empty result list
            gt.dataset = {"images": ids, "annotations": gt_anns, "categories": cats}
            dt.dataset = {"images": ids, "annotations": dt_anns, "categories": cats}
            gt.createIndex()
            dt.createIndex()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return [max(float(s), 0.0) for s in ev.stats], ev.eval["precision"]
