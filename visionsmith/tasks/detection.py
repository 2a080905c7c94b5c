"""Object detection: a variable-length set of boxes and class labels per image.

Shapes: images ``[B, C, S, S]``; per image ``boxes`` float ``[M_i, 4]`` (x1, y1, x2, y2 in input
pixels) and ``labels`` int64 ``[M_i]`` in ``[0, K)`` -- the class list has no background entry (the
data sources' index 0 "background", shared with segmentation, is dropped here).  The model's output
is one tensor ``[B, N, 5 + K]`` (decoded boxes, centre-ness logit, class logits at N locations;
``models/heads/detection.py``); ``postprocess`` turns it into per-image detections (score =
sqrt(sigmoid(class) x sigmoid(centre-ness)), class-aware NMS).  Metrics: COCO mAP@[.5:.95], mAP@.5,
mAP@.75, AR@100 and per-class AP by pycocotools (``metrics/detection.py``).
"""
from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor, nn

from ..data.errors import DataError
from ..data.transforms import IGNORE
from ..errors import UserError
from .base import Task, register_task

SOURCES = ("scenes", "coco", "voc", "yolo")  # data.name values this task reads


def _sources(cfg) -> dict:
    """``{"train", "val"?, "test"?}`` datasets with boxes for ``cfg.data`` (a name in ``SOURCES``)."""
    from ..data import coco, scenes
    d = cfg.data
    size = d.cache_size or d.image_size
    if d.name == "scenes":
        return scenes.load_scenes(size=size)
    if not d.root:
        raise DataError(f"data.root is required for data.name={d.name} (the dataset folder)")
    if d.name == "coco":
        return coco.load_coco_root(d.root, size, grayscale=d.grayscale, strict=d.strict, max_pixels=d.max_pixels)
    from ..data import detection
    if d.name == "voc":
        return detection.load_voc_detection(d.root, size, grayscale=d.grayscale, strict=d.strict,
                                            max_pixels=d.max_pixels)
    if d.name == "yolo":
        return detection.load_yolo(d.root, size, grayscale=d.grayscale, strict=d.strict, max_pixels=d.max_pixels)
    raise DataError(f"data.name={d.name!r} holds no boxes; task detection reads {', '.join(SOURCES)}")


def _objects_only(ds):
    """The split with the "background" class dropped from the class list (boxes never carry it):
    labels shift down by one, so they index the model's K class outputs directly.  Its semantic
    masks, which detection never reads, become an all-ignore view (no memory)."""
    if ds.boxes is None:
        raise DataError(f"{ds.name}: no boxes in this data set; detection needs box annotations")
    if not ds.classes or ds.classes[0] != "background":
        return ds
    n, _, h, w = ds.images.shape
    void = torch.full((1, 1, 1), IGNORE, dtype=torch.uint8).expand(n, h, w)
    return dataclasses.replace(ds, masks=void, classes=list(ds.classes[1:]),
                               box_labels=[lab - 1 for lab in ds.box_labels])


@torch.no_grad()
def decode(out: Tensor, size: tuple[int, int] | None = None, score_threshold: float = 0.05, nms_iou: float = 0.6,
           max_detections: int = 100, pre_nms: int = 1000, class_agnostic: bool = False) -> list[dict]:
    """A detector's output ``[B, N, 5 + K]`` -> per image ``{"boxes" [D, 4], "scores" [D], "labels" [D]}``,
    best first: score = sqrt(sigmoid(class) x sigmoid(centre-ness)) (FCOS's test-time score) per
    location and class; candidates above ``score_threshold``, the ``pre_nms`` best, class-aware NMS at
    ``nms_iou`` (``class_agnostic``: boxes of any class suppress each other, so one object keeps one
    label), at most ``max_detections``; boxes clipped to ``size`` (H, W) when given."""
    from ..ops.boxes import batched_nms, nms
    out = out.float()
    k = out.shape[-1] - 5
    scores_all = torch.sqrt(torch.sigmoid(out[..., 5:]) * torch.sigmoid(out[..., 4:5]))  # [B, N, K]
    res = []
    for o, sc in zip(out, scores_all):
        flat = sc.reshape(-1)
        cand = torch.nonzero(flat > score_threshold).squeeze(1)
        if cand.numel() > pre_nms:
            cand = cand[flat[cand].topk(pre_nms).indices]
        scores, loc, labels = flat[cand], cand // k, cand % k
        boxes = o[loc, :4]
        if size is not None:
            boxes = torch.stack([boxes[:, 0].clamp(0, size[1]), boxes[:, 1].clamp(0, size[0]),
                                 boxes[:, 2].clamp(0, size[1]), boxes[:, 3].clamp(0, size[0])], 1)
        keep = (nms(boxes, scores, nms_iou) if class_agnostic else batched_nms(boxes, scores, labels, nms_iou))
        keep = keep[:max_detections]
        res.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return res


@register_task
class DetectionTask(Task):
    name = "detection"
    target_key = "boxes"
    headline = "map"
    headline_label = "mAP@[.5:.95]"
    val_keys = ("map", "map50", "map75", "ar100")
    test_keys = ("map", "map50", "map75", "ar100", "mean_iou_matched")
    data_sources = SOURCES

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        """The source's splits (background dropped from the classes); a missing val (test) split is held
        out of train by ``data.val_fraction`` (``data.test_fraction``)."""
        from ..data.segmentation import complete_splits
        src = {k: _objects_only(v) for k, v in _sources(self.cfg).items()}
        return complete_splits(src, self.cfg.data, seed, "images")

    def _levels(self, backbone) -> list[int]:
        info = getattr(backbone, "feature_info", None)
        if not info:
            raise DataError(f"model {self.cfg.model.name!r} has no feature pyramid (feature_info); detection needs one")
        return [i for i, f in enumerate(info) if f["reduction"] >= self.cfg.det.min_stride] or [len(info) - 1]

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models.detectors import DETECTORS, create_detector
        m = self.cfg.model
        if m.name in DETECTORS:  # a whole detector from transformers (its own head and set loss)
            if m.pretrained is True:
                raise UserError(f"model.name={m.name}: no weights for it install offline; set model.pretrained to a "
                                "local save_pretrained folder of a downloaded checkpoint, or false to train from scratch")
            folder = m.pretrained if isinstance(m.pretrained, str) else None
            return create_detector(m.name, num_classes, folder=folder, weights=pretrained is not False,
                                   in_chans=m.in_chans, **m.kwargs)
        return self._on_pyramid(num_classes, pretrained)

    def _on_pyramid(self, num_classes: int, pretrained) -> nn.Module:
        """A registered backbone's pyramid into the FCOS head, or Faster R-CNN's (``det.head``)."""
        from ..models import create_model
        from ..models.heads.detection import FCOSHead
        from ..models.heads.faster_rcnn import FasterRCNNHead, TwoStageDetector
        from ..models.segmenter import EncoderDecoder
        m, d = self.cfg.model, self.cfg.det
        pre = m.pretrained if pretrained is None else pretrained
        backbone = create_model(m.name, num_classes=0, pretrained=pre, in_chans=m.in_chans, drop_rate=0.0, **m.kwargs)
        levels = self._levels(backbone)
        info = backbone.feature_info
        chans, strides = [info[i]["num_chs"] for i in levels], [info[i]["reduction"] for i in levels]
        if d.head == "faster_rcnn":
            return TwoStageDetector(backbone, FasterRCNNHead(chans, strides, num_classes, channels=d.channels), levels)
        head = FCOSHead(chans, strides, num_classes, channels=d.channels, convs=d.convs)
        return EncoderDecoder(backbone, head, levels)

    @functools.cached_property
    def strides(self) -> list[int]:
        """The head's level strides, from the backbone's ``feature_info`` (an untrained backbone is
        built once for it: the loss needs the locations, and the loop's task holds no model)."""
        from ..models import create_model
        m = self.cfg.model
        bb = create_model(m.name, num_classes=0, pretrained=False, in_chans=m.in_chans, drop_rate=0.0, **m.kwargs)
        return [bb.feature_info[i]["reduction"] for i in self._levels(bb)]

    def points(self, size: tuple[int, int], device=None) -> tuple[Tensor, Tensor]:
        from ..models.heads.detection import input_points
        return input_points(size, self.strides, device)

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """``{"image": float [B, C, S, S], "boxes": [M_i, 4] per image, "labels": [M_i] per image}``:
        the boxes moved with the pixels; a box cropped to under 2 px a side is dropped (and its label)."""
        ids = idx.tolist()
        out = transform.apply(ds.images[idx], generator, boxes=[ds.boxes[i] for i in ids], min_side=2.0)
        labels = [ds.box_labels[i][keep] for i, keep in zip(ids, out["keep"])]
        return {"image": out["image"], "boxes": out["boxes"], "labels": labels}

    # -- training -----------------------------------------------------------------------------
    @functools.cached_property
    def _loss(self):
        from ..losses.detection import FCOSLoss
        return FCOSLoss(self.cfg.det.range_scale, self.cfg.det.radius)

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        """FCOS loss (focal + centre-ness-weighted GIoU + centre-ness BCE) of ``out`` ``[B, N, 5 + K]``."""
        pts, strides = self.points(tuple(batch["image"].shape[-2:]), out.device)
        if pts.shape[0] != out.shape[1]:
            raise RuntimeError(f"detection head gave {out.shape[1]} locations, the strides {self.strides} give "
                               f"{pts.shape[0]}")
        loss, _ = self._loss(out, pts, strides, batch["boxes"], batch["labels"])
        return loss

    def distill_loss(self, out: Tensor, t_out: Tensor, batch: dict, temperature: float) -> tuple[Tensor, dict]:
        """``losses.detection.dense_detection_kd`` of two FCOS outputs ``[B, N, 5 + K]`` at the same locations."""
        from ..losses.detection import dense_detection_kd
        if t_out.shape != out.shape:
            raise UserError(f"distill.teacher {self.cfg.distill.teacher} answers {tuple(t_out.shape[1:])} (locations, "
                            f"5 + classes) per image where the student answers {tuple(out.shape[1:])}: a detection "
                            "teacher needs the student's head strides (det.min_stride, the backbone's levels)")
        _, strides = self.points(tuple(batch["image"].shape[-2:]), out.device)
        return dense_detection_kd(out, t_out, temperature, strides)

    def postprocess_settings(self) -> dict:
        """What turns raw outputs into detections (``decode``'s keywords): exports and servers carry it."""
        d = self.cfg.det
        return {"score_threshold": d.score_threshold, "nms_iou": d.nms_iou, "max_detections": d.max_detections,
                "pre_nms": d.pre_nms, "class_agnostic": d.class_agnostic_nms}

    def postprocess(self, out: Tensor, size: tuple[int, int] | None = None) -> list[dict]:
        """``[B, N, 5 + K]`` -> per image detections (see ``decode``), with this run's ``det`` settings."""
        return decode(out, size, **self.postprocess_settings())

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]):
        return _BoxMetric(self, classes)

    def score(self, outputs: Tensor, targets, classes: list[str]) -> dict:
        raise NotImplementedError("detection is scored from its own batches (evaluate), not from a target tensor")

    def eval_artifacts(self, run_dir, ds, outputs: Tensor, m: dict, n: int = 16) -> dict:
        """For the official evaluation, the files the report draws and tools re-read:

        - ``detections.json``: every test image's detections in COCO results format (category_id =
          class index + 1, image_id = row in the split) that any COCO tool re-scores;
        - ``eval_samples.npz``: the first ``n`` images with their true and predicted boxes;
        - ``pr_curves.npz``: per class COCO's precision at IoU 0.5 over its 101 recall points, AP@.5
          and AP@[.5:.95] (``DetectionMetric.pr_curves``);
        - ``errors.json`` and ``errors.npz``: the worst false positives and misses of the whole split
          (``box_errors``); the .npz adds a crop of each (``error_crops``) and the same fields as arrays.

        Boxes in all of them are in the pixels of ``ds.images`` (the images the files hold): the
        predictions, made at ``data.image_size``, are scaled back when the split is cached larger."""
        if run_dir is None or not len(ds):
            return {}
        import json

        import numpy as np

        from ..metrics.detection import DetectionMetric, to_coco_results
        from ..metrics.detection_errors import box_errors, error_arrays, error_crops, to_data_pixels
        s = int(self.cfg.data.image_size)
        preds = to_data_pixels(self.postprocess(outputs, (s, s)), tuple(ds.images.shape[-2:]), s)
        (run_dir / "detections.json").write_text(json.dumps(to_coco_results(preds, list(range(len(preds))))))
        k = min(n, len(ds))

        def flat(xs):
            return np.concatenate([x.numpy() for x in xs]) if xs else np.zeros(0)

        np.savez_compressed(
            run_dir / "eval_samples.npz", images=ds.images[:k].numpy(),
            true_boxes=flat(ds.boxes[:k]).reshape(-1, 4), true_labels=flat(ds.box_labels[:k]),
            true_counts=np.array([len(b) for b in ds.boxes[:k]]),
            pred_boxes=flat([p["boxes"] for p in preds[:k]]).reshape(-1, 4),
            pred_scores=flat([p["scores"] for p in preds[:k]]), pred_labels=flat([p["labels"] for p in preds[:k]]),
            pred_counts=np.array([len(p["boxes"]) for p in preds[:k]]))
        classes = list(ds.classes)
        metric = DetectionMetric(classes)
        metric.update(preds, [{"boxes": b, "labels": lab} for b, lab in zip(ds.boxes, ds.box_labels)])
        np.savez_compressed(run_dir / "pr_curves.npz", classes=np.array(classes, dtype=str), **metric.pr_curves())
        errors = box_errors(preds, ds.boxes, ds.box_labels, classes)
        (run_dir / "errors.json").write_text(json.dumps(errors, indent=1))
        np.savez_compressed(run_dir / "errors.npz", fp_crops=error_crops(ds.images, errors["false_positives"]),
                            miss_crops=error_crops(ds.images, errors["misses"]), **error_arrays(errors))
        return {"detections_file": "detections.json"}

    def summary(self, m: dict) -> str:
        return (f"mAP {m['map']:.4f}  mAP@.5 {m['map50']:.4f}  mAP@.75 {m['map75']:.4f}  AR@100 {m['ar100']:.4f}"
                + (f"  matched IoU {m['mean_iou_matched']:.4f}" if m.get("mean_iou_matched") is not None else ""))

    def per_class_lines(self, m: dict) -> list[str]:
        classes, ap = m["classes"], m["per_class_ap"]
        width = max(len(c) for c in classes)
        f = lambda v: "   -  " if v is None else f"{v:.4f}"
        return [f"{'class':<{width}}  AP"] + [f"{c:<{width}}  {f(v)}" for c, v in zip(classes, ap)]


class _BoxMetric:
    """``DetectionMetric`` behind the task's metric protocol: ``update(out [B, N, 5 + K], batch)``."""

    def __init__(self, task: DetectionTask, classes: list[str]):
        from ..metrics.detection import DetectionMetric
        self.task, self.classes = task, list(classes)
        self.m = DetectionMetric(self.classes)

    def update(self, out: Tensor, batch: dict) -> None:
        size = tuple(batch["image"].shape[-2:])
        self.m.update(self.task.postprocess(out, size),
                      [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])])

    def reduce(self) -> None:
        self.m.reduce()

    def compute(self) -> dict:
        return {**self.m.compute(), "classes": self.classes}
