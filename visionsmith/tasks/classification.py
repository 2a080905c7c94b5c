"""Image classification: loss, postprocess and metrics for one label per image.

Shapes used throughout: ``logits`` float ``[N, K]`` (N images, K classes, unnormalised scores),
``labels`` int64 ``[N]`` with values in ``[0, K)``.

The metrics are written with plain torch ops (``bincount`` for the confusion matrix) rather
than a metrics library: torchmetrics is not a dependency, and the whole set is a few lines.
``tests/tasks/test_classification.py`` checks every number against ``sklearn.metrics``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .base import Task, register_task

__all__ = ["ClassificationMetric", "ClassificationTask", "compute_metrics", "confusion_matrix", "worst_mistakes"]


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be [N] with N={logits.shape[0]}, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got min {int(labels.min())} "
                         f"max {int(labels.max())}")


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``[K, K]`` int64; row = true class, column = predicted class.

    One ``bincount`` over the flattened pair index ``true * K + pred``.
    """
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # A class with no predictions (precision) or no support (recall) scores 0, not NaN --
    # the same convention as sklearn's ``zero_division=0``.
    # Divide by 1 where den == 0 (the result is discarded there) so no NaN/inf is ever formed.
    nonzero = den > 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


@torch.no_grad()
def compute_metrics(logits: Tensor, labels: Tensor, classes: list[str]) -> dict:
    """All classification metrics for one split, as a JSON-able dict.

    Args:
        logits: float ``[N, K]``.
        labels: int64 ``[N]``.
        classes: the K class names, index-aligned with the logit columns.

    Returns:
        ``acc`` (top-1), ``top5`` (top-min(5, K) accuracy), ``macro_f1`` (unweighted mean of the
        per-class F1 over all K classes), ``loss`` (mean cross-entropy, no label smoothing),
        ``per_class`` (``precision``, ``recall``, ``f1``, ``support`` lists of length K),
        ``confusion`` (K x K list, rows = true, columns = predicted), ``classes`` and ``n``.
    """
    _check(logits, labels)
    n, k = logits.shape
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} logit columns")
    logits = logits.detach().float().cpu()
    labels = labels.detach().long().cpu()
    preds = logits.argmax(dim=1)

    cm = confusion_matrix(preds, labels, k)
    tp = cm.diag().double()
    support = cm.sum(dim=1).double()  # row sums: how many of each true class
    predicted = cm.sum(dim=0).double()  # column sums: how often each class was predicted
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)

    topk = min(5, k)
    if n:
        top5 = (logits.topk(topk, dim=1).indices == labels[:, None]).any(dim=1).double().mean().item()
        acc = (preds == labels).double().mean().item()
        loss = F.cross_entropy(logits, labels).item()
    else:  # an empty split: report zeros rather than NaN so the JSON stays valid
        top5 = acc = loss = 0.0
    return {
        "acc": acc,
        "top5": top5,
        "macro_f1": f1.mean().item(),
        "loss": loss,
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": [int(s) for s in cm.sum(dim=1).tolist()],
        },
        "confusion": cm.tolist(),
        "classes": list(classes),
        "n": int(n),
    }


@torch.no_grad()
def worst_mistakes(logits: Tensor, labels: Tensor, k: int = 16) -> list[dict]:
    """The ``k`` wrong predictions made with the highest confidence in the wrong class.

    Confidence is the softmax probability of the predicted class. Returns a list (most confident
    first) of ``{"index", "label", "pred", "confidence"}`` where ``index`` is the row in
    ``logits``; fewer than ``k`` entries when there are fewer mistakes.
    """
    _check(logits, labels)
    probs = logits.detach().float().cpu().softmax(dim=1)
    labels = labels.detach().long().cpu()
    conf, preds = probs.max(dim=1)
    wrong = (preds != labels).nonzero().flatten()
    order = conf[wrong].argsort(descending=True, stable=True)[:k]
    return [
        {"index": int(i), "label": int(labels[i]), "pred": int(preds[i]), "confidence": float(conf[i])}
        for i in wrong[order].tolist()
    ]


@register_task
class ClassificationTask(Task):
    """One label per image.

    Loss: softmax cross-entropy with optional label smoothing (Szegedy et al., "Rethinking the
    Inception Architecture for Computer Vision", CVPR 2016, sec. 7): the target puts
    ``1 - eps`` on the true class and spreads ``eps`` uniformly over all K classes.
    Model: the backbone's own classifier head (``reset_classifier``), so checkpoint keys and the
    random initialisation are those of the backbone family.
    """

    name = "classification"
    target_key = "label"
    headline = "acc"
    headline_label = "test accuracy"
    val_keys = ("acc", "top5", "macro_f1", "loss")
    test_keys = ("acc", "top5", "macro_f1")
    data_sources = ("fashion_mnist", "digits", "folder", "csv")

    def __init__(self, cfg=None, classes: list[str] | None = None):
        super().__init__(cfg)
        self.classes = list(classes) if classes is not None else None
        self.label_smoothing = cfg.train.label_smoothing if cfg is not None else 0.0

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        from ..data import build_datasets
        return build_datasets(self.cfg.data, seed)

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models import create_model
        m = self.cfg.model
        return create_model(m.name, num_classes=num_classes, pretrained=m.pretrained if pretrained is None else pretrained,
                            in_chans=m.in_chans, drop_rate=m.drop_rate, **m.kwargs)

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """``{"image": float [B, C, S, S], "label": int64 [B]}``."""
        return {"image": transform(ds.images[idx], generator), "label": ds.labels[idx]}

    # -- training -----------------------------------------------------------------------------
    def loss(self, logits: Tensor, batch, label_smoothing: float | None = None) -> Tensor:
        """Mean cross-entropy. ``logits`` float ``[B, K]``; ``batch`` a batch dict or int64 ``[B]`` -> scalar."""
        target = batch[self.target_key] if isinstance(batch, dict) else batch
        eps = self.label_smoothing if label_smoothing is None else label_smoothing
        return F.cross_entropy(logits, target, label_smoothing=eps)

    @torch.no_grad()
    def postprocess(self, logits: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
        """Top-k softmax probabilities and class indices, each ``[B, min(k, K)]``, best first."""
        return logits.float().softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]) -> "ClassificationMetric":
        return ClassificationMetric(classes)

    def metrics(self, logits: Tensor, labels: Tensor) -> dict:
        """``compute_metrics`` with this task's class names (``class_0``... when none were given)."""
        classes = self.classes or [f"class_{i}" for i in range(logits.shape[1])]
        return compute_metrics(logits, labels, classes)

    def eval_artifacts(self, run_dir, ds, logits: Tensor, m: dict, worst_k: int = 16) -> dict:
        """The ``worst_k`` most confident mistakes; for the official evaluation also their images in
        ``eval_worst.npz`` (the report's mistakes gallery)."""
        worst = worst_mistakes(logits, ds.labels, k=worst_k)
        if run_dir is not None:
            import numpy as np
            idx = torch.tensor([w["index"] for w in worst], dtype=torch.long)
            np.savez_compressed(run_dir / "eval_worst.npz", images=ds.images[idx].numpy(),
                                labels=np.array([w["label"] for w in worst]), preds=np.array([w["pred"] for w in worst]),
                                confidence=np.array([w["confidence"] for w in worst]))
        return {"worst": worst}

    def summary(self, m: dict) -> str:
        return f"accuracy {m['acc']:.4f}  top-5 {m['top5']:.4f}  macro-F1 {m['macro_f1']:.4f}"

    def per_class_lines(self, m: dict) -> list[str]:
        pc, width = m["per_class"], max(len(c) for c in m["classes"])
        return [f"{'class':<{width}}  precision  recall   f1     support"] + [
            f"{c:<{width}}  {pc['precision'][i]:.4f}     {pc['recall'][i]:.4f}   {pc['f1'][i]:.4f} {pc['support'][i]:>7}"
            for i, c in enumerate(m["classes"])]


class ClassificationMetric:
    """Keeps every logit row and label (top-k, loss and the worst mistakes need them all; a split
    of 10k images x 10 classes is 400 kB); ``compute`` is ``compute_metrics``.  ``reduce`` gathers
    the rows of every DDP rank."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.logits: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, logits: Tensor, batch: dict) -> None:
        self.logits.append(logits.detach().float().cpu())
        self.labels.append(batch["label"].detach().long().cpu())

    def reduce(self) -> None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self._cat(self.logits, len(self.classes)), self._cat(self.labels)))
            self.logits, self.labels = [p[0] for p in parts], [p[1] for p in parts]

    @staticmethod
    def _cat(xs: list[Tensor], k: int | None = None) -> Tensor:
        if xs:
            return torch.cat(xs)
        return torch.empty(0, k) if k is not None else torch.empty(0, dtype=torch.long)

    def compute(self) -> dict:
        return compute_metrics(self._cat(self.logits, len(self.classes)), self._cat(self.labels), self.classes)
