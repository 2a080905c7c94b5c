"""Losses for one-stage detection: sigmoid focal loss, FCOS target assignment, and the FCOS loss.

Shapes: ``out`` float ``[B, N, 5 + K]`` (a ``FCOSHead``'s output: decoded boxes xyxy, centre-ness
logit, K class logits), ``points`` ``[N, 2]`` location centres and ``strides`` ``[N]``; per image
``boxes`` float ``[M_i, 4]`` xyxy input pixels and ``labels`` int64 ``[M_i]`` in ``[0, K)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.boxes import box_giou

__all__ = ["FCOSLoss", "dense_detection_kd", "fcos_targets", "sigmoid_focal_loss"]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. 5) of
    ``logits`` against 0/1 ``targets`` of the same shape (a binary problem per class)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (a_t * ce * (1 - p_t) ** gamma).sum()


@torch.no_grad()
def fcos_targets(points: Tensor, strides: Tensor, boxes: Tensor, labels: Tensor, ranges: Tensor,
                 radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """FCOS's assignment for one image -> (``[N]`` int64 label per location, -1 = background;
    ``[N, 4]`` the box it regresses (its object's, where positive)).

    A location is a candidate for an object when it lies inside the box AND inside the box's centre
    region of ``radius`` strides (centre sampling, FCOS v2), and the largest of its four distances
    to the box sides falls in its level's ``ranges`` ``[N, 2]`` (lo, hi]: big objects go to coarse
    levels.  Several candidates: the smallest box wins (FCOS sec. 3.2)."""
    n, m = points.shape[0], boxes.shape[0]
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device), points.new_zeros(n, 4)
    x, y = points[:, 0:1], points[:, 1:2]                                    # [N, 1]
    b = boxes[None]                                                           # [1, M, 4]
    ltrb = torch.stack([x - b[..., 0], y - b[..., 1], b[..., 2] - x, b[..., 3] - y], -1)  # [N, M, 4]
    cx, cy = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2        # [1, M]
    r = strides[:, None] * radius                                             # [N, 1]
    # the centre region, clipped to the box
    cl = torch.maximum(cx - r, b[..., 0]); ct = torch.maximum(cy - r, b[..., 1])
    cr = torch.minimum(cx + r, b[..., 2]); cb = torch.minimum(cy + r, b[..., 3])
    in_centre = (x > cl) & (x < cr) & (y > ct) & (y < cb)                     # [N, M]
    reach = ltrb.amax(-1)                                                     # [N, M]
    in_range = (reach > ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    area = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).expand(n, m).clone()
    area[~(in_centre & in_range & (ltrb.amin(-1) > 0))] = float("inf")
    best_area, best = area.min(1)                                             # [N]
    lab = labels[best].clone()
    lab[torch.isinf(best_area)] = -1
    return lab, boxes[best]


class FCOSLoss(nn.Module):
    """focal loss (classification) + GIoU loss weighted by the centre-ness target (boxes) + BCE
    (centre-ness), each normalised as in FCOS v2: by the number of positives (summed over DDP
    ranks is left out: per-rank normalisation, as the single-GPU recipe).

    ``forward(out [B, N, 5 + K], points [N, 2], strides [N], boxes list, labels list) -> (loss, parts)``
    with ``parts`` = {"cls", "box", "ctr"} detached floats for logging."""

    def __init__(self, range_scale: float = 4.0, radius: float = 1.5, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.range_scale, self.radius, self.alpha, self.gamma = range_scale, radius, alpha, gamma

    def ranges(self, strides: Tensor) -> Tensor:
        """``[N, 2]`` (lo, hi] of the largest distance a location of each level regresses:
        ``range_scale`` x its stride up to ``range_scale`` x the next level's (FCOS uses 8 on
        800 px COCO images: 0-64-128-...; 4 suits objects of 20-60 px); the first level starts
        at 0 and the last is open."""
        levels = torch.unique(strides)
        hi = torch.where(strides == levels[-1], torch.full_like(strides, float("inf")), strides * self.range_scale)
        lo = torch.where(strides == levels[0], torch.zeros_like(strides), strides / 2 * self.range_scale)
        return torch.stack([lo, hi], 1)

    def forward(self, out: Tensor, points: Tensor, strides: Tensor, boxes: list[Tensor], labels: list[Tensor]):
        out = out.float()
        b, n, k = out.shape[0], out.shape[1], out.shape[2] - 5
        rng = self.ranges(strides)
        tl, tb = zip(*(fcos_targets(points, strides, bx.to(out.device), lb.to(out.device), rng, self.radius)
                       for bx, lb in zip(boxes, labels)))
        tl, tb = torch.stack(tl), torch.stack(tb)                              # [B, N], [B, N, 4]
        pos = tl >= 0
        num_pos = max(1.0, float(pos.sum()))
        onehot = torch.zeros(b, n, k, device=out.device)
        onehot[pos] = F.one_hot(tl[pos], k).float()
        cls = sigmoid_focal_loss(out[..., 5:], onehot, self.alpha, self.gamma) / num_pos
        if not pos.any():  # no object in the batch: only negatives teach (a graph on every output)
            zero = out[..., :5].sum() * 0
            return cls + zero, {"cls": float(cls.detach()), "box": 0.0, "ctr": 0.0}
        p, t = out[pos], tb[pos]                                               # [P, 5 + K], [P, 4]
        pts = points[None].expand(b, n, 2)[pos]                                # [P, 2]
        ltrb = torch.cat([pts - t[:, :2], t[:, 2:] - pts], 1)                  # [P, 4] > 0
        ctr_t = torch.sqrt((torch.minimum(ltrb[:, 0], ltrb[:, 2]) / torch.maximum(ltrb[:, 0], ltrb[:, 2]))
                           * (torch.minimum(ltrb[:, 1], ltrb[:, 3]) / torch.maximum(ltrb[:, 1], ltrb[:, 3])))
        box = ((1 - box_giou(p[:, :4], t)) * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
        ctr = F.binary_cross_entropy_with_logits(p[:, 4], ctr_t, reduction="sum") / num_pos
        return cls + box + ctr, {"cls": float(cls.detach()), "box": float(box.detach()), "ctr": float(ctr.detach())}


def _bernoulli_kl(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """Elementwise KL(Bernoulli(sigmoid t) || Bernoulli(sigmoid s)) of two logit tensors: BCE against the
    teacher's probability minus the teacher's own entropy, so it is 0 where the two agree."""
    p = torch.sigmoid(t_logits)
    return (F.binary_cross_entropy_with_logits(s_logits, p, reduction="none")
            - F.binary_cross_entropy_with_logits(t_logits, p, reduction="none"))


def dense_detection_kd(student: Tensor, teacher: Tensor, temperature: float, strides: Tensor,
                       gamma: float = 2.0) -> tuple[Tensor, dict]:
    """Distillation of a dense one-stage detector from a teacher on the same N locations.

    ``student``, ``teacher`` float ``[B, N, 5 + K]`` (boxes xyxy, centre-ness logit, K class logits);
    ``strides`` ``[N]``.  Classes: the Bernoulli KL of each (location, class) between the teacher's and
    the student's sigmoids softened by T, x T^2 as Hinton's KD, focused like the focal loss by
    ``|sigmoid(s) - sigmoid(t)|^gamma`` (most of the N x K pairs are easy background: unfocused they
    drown the objects; Zheng et al. 2022 and GFL's quality focal loss do the same).  Boxes: L1 of the
    corners in strides, and centre-ness: its KL; both weighted by the teacher's confidence at the
    location (its largest class probability), so the student copies the boxes where the teacher sees
    an object.  Everything is normalised by the teacher's total confidence (the FCOS loss divides by
    its positives).  Returns (loss, {"cls", "box", "ctr"} detached floats)."""
    s, t = student.float(), teacher.float().detach()
    T = temperature
    conf = torch.sigmoid(t[..., 5:]).amax(-1)                                # [B, N]
    norm = conf.sum().clamp(min=1.0)
    focus = (torch.sigmoid(s[..., 5:] / T) - torch.sigmoid(t[..., 5:] / T)).abs().detach() ** gamma
    cls = (_bernoulli_kl(s[..., 5:] / T, t[..., 5:] / T) * focus).sum() * T * T / norm
    box = ((s[..., :4] - t[..., :4]).abs().sum(-1) / strides * conf).sum() / norm
    ctr = (_bernoulli_kl(s[..., 4], t[..., 4]) * conf).sum() / norm
    return cls + box + ctr, {"cls": float(cls.detach()), "box": float(box.detach()), "ctr": float(ctr.detach())}
