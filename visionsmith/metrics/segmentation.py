"""Semantic-segmentation metrics from one accumulated confusion matrix.

Every number (IoU, accuracies) is a function of the ``[K, K]`` pixel confusion matrix, so batches
and DDP ranks combine by summing matrices: exact, unlike averaging per-batch mIoU.  Written with
plain torch ops (one ``bincount`` per update) like ``tasks/classification.py``; torchmetrics is not a
dependency, and ``tests/test_seg_metrics.py`` checks the numbers against a numpy reference.

Conventions (the definitions of Long, Shelhamer, Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015, sec. 5), with n_ij = pixels of true class i predicted as j,
t_i = sum_j n_ij (support), p_j = sum_i n_ij (predicted), N = sum_ij n_ij:

    pixel_acc  sum_i n_ii / N
    mean_acc   mean of n_ii / t_i over classes with t_i > 0
    IoU_i      n_ii / (t_i + p_i - n_ii)
    miou       mean of IoU_i over the classes that occur in the target or in the predictions
               (t_i + p_i > 0).  A class in neither has no defined IoU and is left out rather than
               counted as 0 or 1; a class only predicted (false positives) counts with IoU 0.
    fwiou      sum_i (t_i / N) * IoU_i   (frequency-weighted IoU)

No NaN ever reaches the output: an undefined per-class value is ``None``, and with no labelled
pixel at all (N = 0) the summary numbers are 0.0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..losses.segmentation import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "SegmentationMetrics"]

class SegmentationMetrics:
    """Accumulator: ``update`` per batch, ``reduce`` across ranks once, then ``compute``.

        m = SegmentationMetrics(num_classes=21)
        for x, mask in loader:
            m.update(model(x), mask)          # logits [B, K, H, W] or predictions [B, H, W]
        m.reduce()                            # every rank; a no-op without torch.distributed
        print(m.compute()["miou"])

    ``confusion`` is the local ``[K, K]`` int64 matrix (rows = true class, columns = predicted),
    on the device of the first update.  ``reduce`` leaves it untouched and keeps the all-reduced sum
    aside, so calling it twice does not double-count; ``compute`` reads that sum until the next
    ``update`` or ``reset``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"SegmentationMetrics: num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"SegmentationMetrics: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._reduced: Tensor | None = None

    @torch.no_grad()
    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch.  ``preds``: int ``[B, H, W]`` class indices, or float logits/probabilities
        ``[B, K, H, W]`` (argmax over K); ``target``: int ``[B, H, W]`` with ``ignore_index`` for void."""
        k = self.num_classes
        if preds.ndim == target.ndim + 1:
            if preds.shape[1] != k:
                raise ValueError(f"SegmentationMetrics: logits have {preds.shape[1]} channels, expected {k}")
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"SegmentationMetrics: predictions {tuple(preds.shape)} and target "
                             f"{tuple(target.shape)} do not match (expected [B, H, W] or logits [B, K, H, W])")
        valid = target != self.ignore_index
        t, p = target[valid].long(), preds[valid].long()
        if t.numel():
            lo, hi = min(int(t.min()), int(p.min())), max(int(t.max()), int(p.max()))
            if lo < 0 or hi >= k:
                raise ValueError(f"SegmentationMetrics: labels/predictions must lie in [0, {k}) or equal "
                                 f"ignore_index={self.ignore_index}; found values in [{lo}, {hi}]")
        if self.confusion.device != t.device:
            self.confusion = self.confusion.to(t.device)
        self.confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self._reduced = None

    @torch.no_grad()
    def reduce(self, group=None) -> None:
        """Sum the confusion matrices of all ranks (``all_reduce``, SUM) when a process group is
        initialised; a no-op otherwise.  A collective: every rank of ``group`` must call it."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        cm = self.confusion.clone()
        if dist.get_backend(group) == "nccl" and not cm.is_cuda:  # nccl reduces CUDA tensors only
            cm = cm.cuda()
        dist.all_reduce(cm, op=dist.ReduceOp.SUM, group=group)
        self._reduced = cm

    @torch.no_grad()
    def compute(self) -> dict:
        """The metrics as a JSON-able dict (see the module docstring for the definitions):
        ``miou``, ``pixel_acc``, ``mean_acc``, ``fwiou`` (floats), ``per_class`` {``iou``, ``acc``:
        K floats or None, ``support``: K ints}, ``confusion`` (K x K ints), ``classes``, ``n_pixels``."""
        cm = (self.confusion if self._reduced is None else self._reduced).detach().cpu()
        cmf = cm.double()
        tp, support, predicted = cmf.diag(), cmf.sum(1), cmf.sum(0)
        n = float(cmf.sum())
        union = support + predicted - tp
        seen, labelled = union > 0, support > 0
        iou = tp / union.clamp(min=1)  # valid only where seen
        acc = tp / support.clamp(min=1)  # valid only where labelled

        def mean(x: Tensor, where: Tensor) -> float:
            return float(x[where].mean()) if where.any() else 0.0

        return {
            "miou": mean(iou, seen),
            "pixel_acc": float(tp.sum()) / n if n else 0.0,
            "mean_acc": mean(acc, labelled),
            "fwiou": float((support * iou).sum()) / n if n else 0.0,  # support is 0 where IoU is undefined
            "per_class": {
                "iou": [float(v) if s else None for v, s in zip(iou.tolist(), seen.tolist())],
                "acc": [float(v) if s else None for v, s in zip(acc.tolist(), labelled.tolist())],
                "support": [int(v) for v in cm.sum(1).tolist()],
            },
            "confusion": cm.tolist(),
            "classes": list(self.class_names),
            "n_pixels": int(cm.sum()),
        }
