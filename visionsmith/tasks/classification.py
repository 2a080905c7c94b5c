"""Image classification: loss, postprocess and metrics for one label per image.

Shapes used throughout: ``logits`` float ``[N, K]`` (N images, K classes, unnormalised scores),
``labels`` int64 ``[N]`` with values in ``[0, K)``.

The metrics are written with plain torch ops (``bincount`` for the confusion matrix) rather
than a metrics library: torchmetrics is not a dependency, and the whole set is a few lines.
``tests/tasks/test_classification.py`` checks every number against ``sklearn.metrics``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassificationTask", "compute_metrics", "confusion_matrix", "worst_mistakes"]


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


class ClassificationTask:
    """Loss and postprocess for single-label classification.

    Loss: softmax cross-entropy with optional label smoothing (Szegedy et al., "Rethinking the
    Inception Architecture for Computer Vision", CVPR 2016, sec. 7): the target puts
    ``1 - eps`` on the true class and spreads ``eps`` uniformly over all K classes.
    """

    name = "classification"

    def __init__(self, classes: list[str] | None = None):
        self.classes = list(classes) if classes is not None else None

    def loss(self, logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy. ``logits`` float ``[B, K]``, ``target`` int64 ``[B]`` -> scalar."""
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    @torch.no_grad()
    def postprocess(self, logits: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
        """Top-k softmax probabilities and class indices, each ``[B, min(k, K)]``, best first."""
        return logits.float().softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)

    def metrics(self, logits: Tensor, labels: Tensor) -> dict:
        """``compute_metrics`` with this task's class names (``class_0``... when none were given)."""
        classes = self.classes or [f"class_{i}" for i in range(logits.shape[1])]
        return compute_metrics(logits, labels, classes)
