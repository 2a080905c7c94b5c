"""Losses for semantic segmentation: per-pixel cross-entropy, soft Dice, and their weighted sum.

Shapes: ``logits`` float ``[B, K, H, W]`` (unnormalised scores), ``target`` int64 ``[B, H, W]`` with
class indices in ``[0, K)`` or ``ignore_index`` (255: void / unlabelled pixels, as in VOC and
Cityscapes masks).  Ignored pixels contribute neither to the loss nor to its normalisation.

A batch in which every pixel is ignored (a random crop of the void border) gives a loss of exactly
0 that still has a graph (all-zero gradients), never NaN: the mean of nothing is taken as 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "CrossEntropy2d", "DiceLoss", "SegLoss"]

IGNORE_INDEX = 255


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"segmentation loss: expected logits [B, K, H, W] and target [B, H, W], got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")


class CrossEntropy2d(nn.Module):
    """Mean per-pixel softmax cross-entropy over the non-ignored pixels.

    The same number as ``F.cross_entropy(logits, target, weight, ignore_index=..., label_smoothing=...)``
    (with ``class_weights`` the mean is weighted: divided by the summed weight of the labelled pixels),
    except that an all-ignored batch gives 0 instead of NaN.  Label smoothing: Szegedy et al., CVPR
    2016, sec. 7.  ``class_weights``: K floats (e.g. inverse frequency for rare classes), kept in a
    non-persistent buffer so it follows ``.to(device)`` without entering checkpoints.

    ``forward(logits [B, K, H, W], target [B, H, W]) -> scalar``.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                 class_weights: Sequence[float] | Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        target = target.long()
        w = self.class_weights
        if w is not None and w.numel() != logits.shape[1]:
            raise ValueError(f"CrossEntropy2d: {w.numel()} class weights for {logits.shape[1]} classes")
        # Sum over pixels, then divide by the (weighted) count ourselves: the library's 'mean' is
        # 0/0 = NaN on an all-ignored batch, and so would be its gradient.
        per_px = F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index,
                                 label_smoothing=self.label_smoothing, reduction="none")  # [B, H, W]
        valid = target != self.ignore_index
        if w is None:
            denom = valid.sum().to(per_px.dtype)
        else:  # index with 0 at ignored pixels (255 is out of range), then mask
            denom = (w.to(per_px.dtype)[torch.where(valid, target, 0)] * valid).sum()
        return per_px.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


class DiceLoss(nn.Module):
    """Multi-class soft Dice loss: ``1 - mean_k Dice_k`` on softmax probabilities.

    Milletari, Navab, Ahmadi, "V-Net", 3DV 2016 (arXiv:1606.04797), eq. 1, extended to K classes by
    averaging one-vs-rest scores.  For class k, with p the softmax probability of k and g = 1 where the
    target is k, summed over all non-ignored pixels of the batch (one score per class for the whole
    batch, steadier than per image when a class covers a few pixels of one image):

        Dice_k = (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)

    ``smooth`` keeps the ratio defined and makes a class that is absent from the target and
    (nearly) absent from the prediction score Dice 1, so a batch is not punished for the classes it
    does not contain; probability put on an absent class lowers its Dice towards 0.  The mean is
    over all K classes.  Ignored pixels are removed from p and g alike.  Computed in float32.

    ``forward(logits [B, K, H, W], target [B, H, W]) -> scalar`` in [0, 1].
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check(logits, target)
        k = logits.shape[1]
        valid = target != self.ignore_index  # [B, H, W]
        safe = torch.where(valid, target.long(), 0)
        m = valid.unsqueeze(1).float()  # [B, 1, H, W]
        probs = logits.float().softmax(dim=1) * m  # [B, K, H, W]
        onehot = F.one_hot(safe, k).permute(0, 3, 1, 2).float() * m  # [B, K, H, W]
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)  # [K]
        dice = (2 * inter + self.smooth) / (probs.sum(dims) + onehot.sum(dims) + self.smooth)
        return 1 - dice.mean()


class SegLoss(nn.Module):
    """``ce_weight * CrossEntropy2d + dice_weight * DiceLoss``; a term with weight 0 is not computed.

    Cross-entropy gives well-scaled per-pixel gradients; Dice works on the overlap of whole regions
    and so counteracts the dominance of large classes (background) that plain cross-entropy has.

    ``forward(logits [B, K, H, W], target [B, H, W]) -> scalar``.
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 0.0, ignore_index: int = IGNORE_INDEX,
                 label_smoothing: float = 0.0, class_weights: Sequence[float] | Tensor | None = None,
                 smooth: float = 1.0):
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"SegLoss: weights must be >= 0 and not both 0, got ce_weight={ce_weight}, "
                             f"dice_weight={dice_weight}")
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.ce = CrossEntropy2d(ignore_index, label_smoothing, class_weights)
        self.dice = DiceLoss(ignore_index, smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = 0.0
        if self.ce_weight:
            loss = loss + self.ce_weight * self.ce(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss
