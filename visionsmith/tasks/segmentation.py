"""Semantic segmentation: a class per pixel.

Shapes: images ``[B, C, S, S]``; masks int64 ``[B, S, S]`` with class indices and ``IGNORE`` (255)
for pixels no loss or metric counts; logits ``[B, K, S, S]`` (the head upsamples to the input).
Model: a registered backbone's feature pyramid (``feature_info`` / ``forward_intermediates``) into
an FPN or DeepLabV3+ decoder (``models/heads/segmentation.py``), or SegFormer from transformers as
a whole (``model.name: segformer``).  Loss: cross-entropy ignoring 255, plus ``seg.dice_weight`` x
Dice.  Metrics: one pixel confusion matrix (mIoU, per-class IoU, pixel accuracy, fwIoU),
summed across DDP ranks (``metrics/segmentation.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ..data.errors import DataError
from ..data.transforms import IGNORE
from .base import Task, register_task

SOURCES = ("scenes", "masks", "voc", "coco")  # data.name values this task reads


def _seg_sources(cfg, seed: int) -> dict:
    """``{"train", "val"?, "test"?}`` SegmentationDatasets for ``cfg.data`` (a name in ``SOURCES``)."""
    from ..data import coco, scenes, segmentation
    d = cfg.data
    size = d.cache_size or d.image_size
    if d.name == "scenes":
        return scenes.load_scenes(size=size)
    if not d.root:
        raise DataError(f"data.root is required for data.name={d.name} (the dataset folder)")
    if d.name == "masks":
        return segmentation.load_masks(d.root, size, d.classes, d.grayscale, d.strict, d.max_pixels)
    if d.name == "voc":
        return segmentation.load_voc(d.root, size, d.grayscale, d.strict, d.max_pixels)
    if d.name == "coco":
        return coco.load_coco_root(d.root, size, grayscale=d.grayscale, strict=d.strict, max_pixels=d.max_pixels)
    raise DataError(f"data.name={d.name!r} holds no masks; task segmentation reads {', '.join(SOURCES)}")


@register_task
class SegmentationTask(Task):
    name = "segmentation"
    target_key = "mask"
    headline = "miou"
    headline_label = "mIoU"
    val_keys = ("miou", "pixel_acc", "mean_acc", "fwiou")
    test_keys = ("miou", "pixel_acc", "mean_acc", "fwiou")
    data_sources = SOURCES

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        """The source's splits; a missing val (test) split is held out of train by ``data.val_fraction``
        (``data.test_fraction``, with a fixed seed so every run scores on the same images)."""
        from ..data.segmentation import complete_splits
        return complete_splits(_seg_sources(self.cfg, seed), self.cfg.data, seed, "images with masks")

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models import create_model
        from ..models.heads import build_seg_head
        from ..models.segmenter import EncoderDecoder
        m, s = self.cfg.model, self.cfg.seg
        pre = m.pretrained if pretrained is None else pretrained
        if m.name == "segformer":  # a whole segmenter from transformers (its own encoder and decode head)
            from ..models.segformer import segformer
            return segformer(num_classes, in_chans=m.in_chans, pretrained=pre if isinstance(pre, str) else None,
                             **m.kwargs)
        backbone = create_model(m.name, num_classes=0, pretrained=pre, in_chans=m.in_chans, drop_rate=0.0, **m.kwargs)
        info = getattr(backbone, "feature_info", None)
        if not info:
            raise DataError(f"model {m.name!r} has no feature pyramid (feature_info); segmentation needs one")
        levels = [i for i, f in enumerate(info) if f["reduction"] >= s.min_stride] or [len(info) - 1]
        head = build_seg_head(s.head, [info[i]["num_chs"] for i in levels], [info[i]["reduction"] for i in levels],
                              num_classes, channels=s.channels, min_stride=s.min_stride, norm=s.norm)
        return EncoderDecoder(backbone, head, levels)

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """``{"image": float [B, C, S, S], "mask": int64 [B, S, S]}``: the mask moved with the pixels."""
        x, masks = transform(ds.images[idx], generator, masks=ds.masks[idx])
        return {"image": x, "mask": masks}

    # -- training -----------------------------------------------------------------------------
    def _loss_fn(self):
        if not hasattr(self, "_loss"):
            from ..losses import SegLoss
            self._loss = SegLoss(1.0, self.cfg.seg.dice_weight, IGNORE,
                                 label_smoothing=self.cfg.train.label_smoothing)
        return self._loss

    def loss(self, logits: Tensor, batch: dict) -> Tensor:
        """Per-pixel cross-entropy (255 ignored) + ``seg.dice_weight`` x Dice; ``logits`` [B, K, S, S]."""
        return self._loss_fn()(logits, batch["mask"])

    def distill_loss(self, logits: Tensor, t_logits: Tensor, batch: dict, temperature: float) -> tuple[Tensor, dict]:
        """Per-pixel KL to the teacher's class distribution (``losses.kd``), its logits resized to the
        student's ``[B, K, S, S]`` when the two ran at different sizes."""
        import torch.nn.functional as F

        from ..losses.kd import kd_loss
        if t_logits.shape[-2:] != logits.shape[-2:]:
            t_logits = F.interpolate(t_logits, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return kd_loss(logits.float(), t_logits.float(), temperature), {}

    @torch.no_grad()
    def postprocess(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(class map int64 ``[B, S, S]``, its softmax confidence ``[B, S, S]``)."""
        conf, pred = logits.float().softmax(1).max(1)
        return pred, conf

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]):
        return _MaskMetric(classes)

    def eval_artifacts(self, run_dir, ds, logits: Tensor, m: dict, n: int = 16) -> dict:
        """For the official evaluation: ``eval_samples.npz`` with the first ``n`` test images, their
        true and predicted masks (the report's prediction grid)."""
        if run_dir is not None and len(ds):
            import numpy as np
            k = min(n, len(ds))
            pred = logits[:k].argmax(1).to(torch.uint8)
            true = ds.masks[:k]
            if pred.shape[-2:] != true.shape[-2:]:  # the model ran at image_size; the cache may be larger
                true = torch.nn.functional.interpolate(true[:, None].float(), size=pred.shape[-2:], mode="nearest")[:, 0]
            np.savez_compressed(run_dir / "eval_samples.npz", images=ds.images[:k].numpy(), masks=true.to(torch.uint8).numpy(),
                                preds=pred.numpy())
        return {}

    def summary(self, m: dict) -> str:
        return f"mIoU {m['miou']:.4f}  pixel acc {m['pixel_acc']:.4f}  mean acc {m['mean_acc']:.4f}  fwIoU {m['fwiou']:.4f}"

    def per_class_lines(self, m: dict) -> list[str]:
        pc, width = m["per_class"], max(len(c) for c in m["classes"])
        f = lambda v: "   -  " if v is None else f"{v:.4f}"  # noqa: E731  (a class absent from the split)
        return [f"{'class':<{width}}  IoU     acc     pixels"] + [
            f"{c:<{width}}  {f(pc['iou'][i])}  {f(pc['acc'][i])}  {pc['support'][i]:>8}" for i, c in enumerate(m["classes"])]


class _MaskMetric:
    """``SegmentationMetrics`` behind the task's metric protocol (``update(logits, batch)``), plus ``n``."""

    def __init__(self, classes: list[str]):
        from ..metrics import SegmentationMetrics
        self.m = SegmentationMetrics(len(classes), IGNORE, classes)
        self.n = 0

    def update(self, logits: Tensor, batch: dict) -> None:
        self.m.update(logits, batch["mask"])
        self.n += int(logits.shape[0])

    def reduce(self) -> None:
        self.m.reduce()

    def compute(self) -> dict:
        return {**self.m.compute(), "n": self.n}
