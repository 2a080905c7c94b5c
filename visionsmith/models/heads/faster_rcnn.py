"""Two-stage detection: Faster R-CNN with an FPN, in plain torch.

Ren, He, Girshick, Sun, "Faster R-CNN", NeurIPS 2015; Lin et al., "Feature Pyramid Networks", CVPR 2017.
An FPN neck on the backbone's pyramid; a region proposal network (a 3x3 conv, then per anchor an
objectness logit and four box deltas; 3 aspect ratios, one size per level) proposes boxes; RoIAlign
(``ops/boxes.py``) pools 7 x 7 features of each proposal from the pyramid level its size belongs to; a
box head (two fully connected layers) classifies it over K classes + background and refines it per class.

Why here and not torchvision's: torchvision's detection models and ops do not import with the CPU
torch this project installs (its registry build is CUDA); ``ops/boxes.py`` hands NMS and RoIAlign to
torchvision when a working one is installed.  The layout follows torchvision's so its habits carry over.

The proposals and the sampled training regions depend on the targets, so the head trains through
``loss_and_output(feats, size, boxes, labels)`` (the RPN and box-head losses); ``forward(feats, size)``
gives the shared detection output ``[B, R * K, 5 + K]`` (``models/heads/detection.py``): for each of R
proposals and each class k, the class-k box in input pixels, a constant centre-ness logit (sigmoid 1),
and class logits that are ``logit(p_k)`` (``class_logits``) in column k and a large negative elsewhere, so decoding
(score = sqrt(p_k), class-aware NMS), COCO evaluation, predict and serve are shared with FCOS.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.boxes import (
    batched_nms,
    box_area,
    box_iou,
    cat_in_order,
    clip_boxes,
    nms_fixed,
    remove_small,
    roi_align,
    roi_align_fixed,
)
from ..segmenter import EncoderDecoder
from .detection import FPNNeck
from .segmentation import _check_pyramid

__all__ = ["FasterRCNNHead", "TwoStageDetector"]

OFF = 30.0  # |logit| whose sigmoid is 0 or 1 in float32
CLAMP = math.log(1000.0 / 16)  # largest log-scale change a delta may ask for (torchvision's)


def encode(ref: Tensor, gt: Tensor, w: tuple[float, ...]) -> Tensor:
    """Box deltas (dx, dy, dw, dh) * weights that move ``ref [N, 4]`` onto ``gt [N, 4]`` (xyxy)."""
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = ((gt[:, 0] + gt[:, 2]) - (ref[:, 0] + ref[:, 2])) / 2 / rw
    dy = ((gt[:, 1] + gt[:, 3]) - (ref[:, 1] + ref[:, 3])) / 2 / rh
    return torch.stack([w[0] * dx, w[1] * dy, w[2] * torch.log(gw / rw), w[3] * torch.log(gh / rh)], 1)


def decode(ref: Tensor, deltas: Tensor, w: tuple[float, ...]) -> Tensor:
    """``encode``'s inverse: ``ref [N, 4]`` and ``deltas [N, ..., 4]`` -> boxes ``[N, ..., 4]`` (xyxy)."""
    shape = [-1] + [1] * (deltas.dim() - 2)
    rw, rh = (ref[:, 2] - ref[:, 0]).view(shape), (ref[:, 3] - ref[:, 1]).view(shape)
    cx, cy = (ref[:, 0].view(shape) + rw / 2), (ref[:, 1].view(shape) + rh / 2)
    dx, dy = deltas[..., 0] / w[0], deltas[..., 1] / w[1]
    dw, dh = (deltas[..., 2] / w[2]).clamp(max=CLAMP), (deltas[..., 3] / w[3]).clamp(max=CLAMP)
    pcx, pcy, pw, ph = cx + dx * rw, cy + dy * rh, rw * torch.exp(dw), rh * torch.exp(dh)
    return torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], -1)


def class_logits(z: Tensor) -> Tensor:
    """Box-head logits ``[P, K + 1]`` (column 0: background) -> ``[P, K]``: logit(p_k) of the softmax
    probabilities, as ``z_k - logsumexp(z_j, j != k)``, clamped to +-OFF.  Not ``torch.logit(p)``: for a p_k
    near 1, ``1 - p_k`` keeps few of float32's digits, and two runtimes' last-bit differences in p became
    differences of 1e-2 in the logit."""
    others = torch.eye(z.shape[1], dtype=torch.bool, device=z.device)[1:]              # [K, K + 1]: row k hides class k
    rest = z[:, None, :].masked_fill(others, float("-inf")).logsumexp(-1)               # [P, K]
    return (z[:, 1:] - rest).clamp(-OFF, OFF)


def anchors_for(sizes: list[tuple[int, int]], strides: list[int], scale: float, ratios: tuple[float, ...],
                device=None) -> Tensor:
    """Every anchor of every level: ``[sum h_l * w_l * A, 4]`` xyxy in input pixels, level by level,
    row-major, the A = len(ratios) shapes of a location together; side ``scale * stride``, area kept
    across aspect ratios (h / w = ratio), centred at ``(j + 0.5) * stride``."""
    out = []
    for (h, w), s in zip(sizes, strides):
        r = torch.tensor(ratios, dtype=torch.float32, device=device)
        hw = torch.stack([scale * s / r.sqrt(), scale * s * r.sqrt()], 1)  # [A, 2] widths, heights
        base = torch.cat([-hw / 2, hw / 2], 1)  # [A, 4]
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        c = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).add(0.5).mul(s)  # [h*w, 1, 4]
        out.append((c + base).reshape(-1, 4))
    return torch.cat(out)


def _sample(labels: Tensor, n: int, pos_fraction: float, generator: torch.Generator | None) -> Tensor:
    """Indices of at most ``n`` labelled entries (>= 1 positive, 0 negative, -1 ignored), at most
    ``pos_fraction`` of them positive, drawn at random."""
    pos, neg = torch.nonzero(labels >= 1).squeeze(1), torch.nonzero(labels == 0).squeeze(1)
    n_pos = min(pos.numel(), int(n * pos_fraction))
    n_neg = min(neg.numel(), n - n_pos)
    pick = lambda idx, k: idx[torch.randperm(idx.numel(), generator=generator)[:k].to(idx.device)]  # noqa: E731
    return torch.cat([pick(pos, n_pos), pick(neg, n_neg)])


class FasterRCNNHead(nn.Module):
    """FPN + RPN + RoIAlign box head on the pyramid levels of ``strides`` (``in_channels`` each).

    ``forward(feats, out_size)`` -> ``[B, R * K, 5 + K]`` (module docstring); ``loss_and_output(feats,
    out_size, boxes, labels)`` -> (RPN objectness BCE + RPN smooth-L1 + box-head cross-entropy + box-head
    smooth-L1, the output).  The whole head (neck included) is the model's "classifier" for transfer
    learning and LoRA, as FCOS's is."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, channels: int = 128,
                 anchor_scale: float = 3.0, ratios: tuple[float, ...] = (0.5, 1.0, 2.0), fc: int = 256,
                 roi_size: int = 7, pre_nms: int = 600, post_nms_train: int = 300, post_nms_test: int = 100,
                 rpn_nms: float = 0.7, rpn_batch: int = 256, roi_batch: int = 128):
        super().__init__()
        in_channels, self.strides = _check_pyramid("FasterRCNNHead", in_channels, strides, "none")
        self.num_classes, self.anchor_scale, self.ratios = int(num_classes), float(anchor_scale), tuple(ratios)
        self.roi_size, self.pre_nms, self.rpn_nms = roi_size, pre_nms, rpn_nms
        self.post_nms = (post_nms_train, post_nms_test)
        self.rpn_batch, self.roi_batch = rpn_batch, roi_batch
        a = len(self.ratios)
        self.neck = FPNNeck(in_channels, channels)
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rpn_obj = nn.Conv2d(channels, a, 1)
        self.rpn_reg = nn.Conv2d(channels, 4 * a, 1)
        self.box_head = nn.Sequential(nn.Flatten(1), nn.Linear(channels * roi_size * roi_size, fc), nn.ReLU(inplace=True),
                                      nn.Linear(fc, fc), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(fc, num_classes + 1)  # column 0: background
        self.bbox_pred = nn.Linear(fc, 4 * num_classes)
        for m in (self.rpn_conv, self.rpn_obj, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    int8_own_ops_float = True  # INT8 export: proposals, NMS, RoIAlign and decoding stay float (export/quantize.py)
    RPN_W = (1.0, 1.0, 1.0, 1.0)
    ROI_W = (10.0, 10.0, 5.0, 5.0)

    # -- stage 1: proposals ---------------------------------------------------------------------
    def _rpn(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """-> (objectness ``[B, N]``, deltas ``[B, N, 4]``, anchors ``[N, 4]``, anchors per level)."""
        obj, reg, counts = [], [], []
        for f in feats:
            t = F.relu(self.rpn_conv(f))
            b, _, h, w = t.shape
            obj.append(self.rpn_obj(t).permute(0, 2, 3, 1).reshape(b, -1))         # [B, h*w*A]
            reg.append(self.rpn_reg(t).permute(0, 2, 3, 1).reshape(b, -1, 4))      # [B, h*w*A, 4]
            counts.append(obj[-1].shape[1])
        anchors = anchors_for([tuple(f.shape[-2:]) for f in feats], self.strides, self.anchor_scale, self.ratios,
                              feats[0].device)
        return torch.cat(obj, 1).float(), torch.cat(reg, 1).float(), anchors, counts

    def _proposals(self, obj: Tensor, reg: Tensor, anchors: Tensor, counts: list[int], size) -> list[Tensor]:
        """Per image: the top ``pre_nms`` anchors of each level by objectness, decoded, clipped, tiny
        ones dropped, NMS per level, then the best ``post_nms`` overall: ``[P_i, 4]`` (detached)."""
        post = self.post_nms[0] if self.training else self.post_nms[1]
        level = torch.cat([torch.full((c,), i, device=obj.device) for i, c in enumerate(counts)])
        starts = [0, *torch.tensor(counts).cumsum(0).tolist()[:-1]]
        out = []
        for o, r in zip(obj.detach(), reg.detach()):
            idx = torch.cat([s + lo.topk(min(self.pre_nms, len(lo))).indices for s, lo in zip(starts, o.split(counts))])
            boxes = clip_boxes(decode(anchors[idx], r[idx], self.RPN_W), size)
            ok = remove_small(boxes, 1e-3)
            boxes, scores, lv = boxes[ok], o[idx][ok], level[idx][ok]
            keep = batched_nms(boxes, scores, lv, self.rpn_nms)[:post]
            out.append(boxes[keep])
        return out

    # -- stage 2: box head ------------------------------------------------------------------------
    def _pool(self, feats: list[Tensor], props: list[Tensor]) -> Tensor:
        """RoIAlign of every proposal from its FPN level (FPN paper eq. 1: level 4 for a 224-px box,
        one finer per halving, clamped to the pyramid) -> ``[sum P_i, C, roi, roi]``."""
        rois = torch.cat([torch.cat([torch.full((len(p), 1), float(i), device=p.device), p], 1)
                          for i, p in enumerate(props)])
        k = self._level(rois[:, 1:])
        parts, order = [], []  # per level, then back in roi order
        for f, s in zip(feats, self.strides):
            idx = (k == math.log2(s)).nonzero().flatten()
            if idx.numel():
                order.append(idx)
                parts.append(roi_align(f, rois[idx].to(f.dtype), self.roi_size, 1.0 / s, sampling_ratio=2, aligned=True))
        if not parts:
            return feats[0].new_zeros(0, feats[0].shape[1], self.roi_size, self.roi_size)
        return cat_in_order(parts, order)

    def _level(self, boxes: Tensor) -> Tensor:
        """FPN paper eq. 1: ``[..., 4]`` boxes -> ``[...]`` log2 of the stride of the level each is pooled from
        (level 4 for a 224-px box, one finer per halving, clamped to the pyramid)."""
        side = box_area(boxes).clamp(min=1e-12).sqrt()
        return torch.floor(4 + torch.log2(side / 224 + 1e-8)).clamp(math.log2(self.strides[0]),
                                                                    math.log2(self.strides[-1]))

    def _box_head(self, feats: list[Tensor], props: list[Tensor]) -> tuple[Tensor, Tensor]:
        h = self.box_head(self._pool(feats, props))
        return self.cls_score(h).float(), self.bbox_pred(h).float().view(len(h), self.num_classes, 4)

    def _rows(self, props: Tensor, logits: Tensor, deltas: Tensor, size) -> Tensor:
        """Proposals ``[P, 4]``, box-head logits ``[P, K + 1]`` and deltas ``[P, K, 4]`` -> ``[P, K, 5 + K]``: per
        class k the refined class-k box, centre-ness OFF, and ``class_logits`` in column k, -OFF elsewhere."""
        k = self.num_classes
        logit = class_logits(logits)                                                    # [P, K]
        boxes = clip_boxes(decode(props, deltas, self.ROI_W), size)                     # [P, K, 4]
        eye = torch.eye(k, dtype=torch.bool, device=logit.device)
        cls = torch.where(eye, logit[:, None, :], torch.full_like(logit[:, None, :], -OFF))  # [P, K, K]: diagonal
        return torch.cat([boxes, torch.full_like(boxes[..., :1], OFF), cls], -1)

    @staticmethod
    def _empty_row(rows: Tensor) -> Tensor:
        """``[5 + K]``: a padding row (an empty box no class scores: class logits -OFF)."""
        k = rows.shape[-1] - 5
        return torch.cat([rows.new_zeros(4), rows.new_full((1,), OFF), rows.new_full((k,), -OFF)])

    def _output(self, props: list[Tensor], logits: Tensor, deltas: Tensor, size) -> Tensor:
        """Per image, R = ``post_nms_test`` rows of proposals (padded with empty boxes) x K classes ->
        ``[B, R * K, 5 + K]``."""
        k, r = self.num_classes, self.post_nms[1]
        rows = self._rows(torch.cat(props), logits, deltas, size)                       # [P, K, 5 + K]
        out = self._empty_row(rows).expand(len(props), r, k, 5 + k).clone()
        for i, mine in enumerate(rows.split([len(p) for p in props])):  # each image's proposals, best first
            out[i, :min(len(mine), r)] = mine[:r]
        return out.view(len(props), r * k, 5 + k)

    def forward(self, feats: list[Tensor], out_size) -> Tensor:
        feats = self.neck(feats)
        obj, reg, anchors, counts = self._rpn(feats)
        if self.fixed_shapes or torch.compiler.is_exporting():
            return self._forward_fixed(feats, obj, reg, anchors, counts, out_size)
        props = self._proposals(obj, reg, anchors, counts, out_size)
        logits, deltas = self._box_head(feats, props)
        return self._output(props, logits, deltas, out_size)

    # -- the same detections in shapes fixed by the image size: what ONNX export traces -----------
    fixed_shapes = False  # True: eager inference takes this path too (the tests compare the two)

    def _forward_fixed(self, feats: list[Tensor], obj: Tensor, reg: Tensor, anchors: Tensor, counts: list[int],
                       size) -> Tensor:
        """``forward`` without data-dependent shapes (``torch.export`` cannot trace boolean indexing, a
        variable proposal count or NMS's Python loop): small proposals are masked instead of dropped, NMS is
        ``nms_fixed``, every image keeps R = ``post_nms_test`` proposal rows (the ones past its own count
        padded, as ``_output`` pads), and RoIAlign pools every proposal from every level and keeps the
        level ``_pool`` would pick.  Same output as ``forward``, up to float rounding."""
        b, r, k = obj.shape[0], self.post_nms[1], self.num_classes
        starts = [0, *torch.tensor(counts).cumsum(0).tolist()[:-1]]
        idx = torch.cat([st + o.topk(min(self.pre_nms, c), dim=1).indices
                         for st, c, o in zip(starts, counts, obj.split(counts, 1))], 1)    # [B, M]
        m = idx.shape[1]
        level = torch.cat([torch.full((min(self.pre_nms, c),), i, device=obj.device) for i, c in enumerate(counts)])
        boxes = clip_boxes(decode(anchors[idx].reshape(-1, 4), reg.gather(1, idx[..., None].expand(-1, -1, 4))
                                  .reshape(-1, 4), self.RPN_W), size).view(b, m, 4)
        ok = remove_small(boxes.view(-1, 4), 1e-3).view(b, m)
        order, kept = nms_fixed(boxes, obj.gather(1, idx), level.expand(b, m), ok, self.rpn_nms)
        rank = kept.float() * m - torch.arange(m, device=kept.device, dtype=torch.float32)  # distinct keys
        first = rank.topk(min(r, m), dim=1).indices                                           # kept, best first
        props = boxes.gather(1, order.gather(1, first)[..., None].expand(-1, -1, 4))         # [B, R', 4]
        valid = kept.gather(1, first)                                                        # [B, R']
        # RoIAlign: each level pools every proposal; keep the level ``_pool`` would pick
        want = self._level(props)                                                            # [B, R']
        pooled = 0
        for f, s in zip(feats, self.strides):
            p = roi_align_fixed(f, props.to(f.dtype), self.roi_size, 1.0 / s, sampling_ratio=2)  # [B, R', C, 7, 7]
            pooled = pooled + p * (want == math.log2(s)).to(p.dtype)[..., None, None, None]
        h = self.box_head(pooled.flatten(0, 1))
        rows = self._rows(props.reshape(-1, 4), self.cls_score(h).float(), self.bbox_pred(h).float().view(-1, k, 4),
                          size).view(b, -1, k, 5 + k)
        pad = self._empty_row(rows)
        rows = torch.where(valid[..., None, None], rows, pad)
        if rows.shape[1] < r:  # fewer candidates than rows (a small image): pad as ``_output`` does
            rows = torch.cat([rows, pad.expand(b, r - rows.shape[1], k, 5 + k)], 1)
        return rows.reshape(b, r * k, 5 + k)

    # -- training ---------------------------------------------------------------------------------
    def loss_and_output(self, feats: list[Tensor], out_size, boxes: list[Tensor], labels: list[Tensor],
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The sampled anchors and regions are drawn from ``generator`` (None: torch's default one, which
        the loop seeds every step, so resume stays exact)."""
        feats = self.neck(feats)
        obj, reg, anchors, counts = self._rpn(feats)
        props = self._proposals(obj, reg, anchors, counts, out_size)
        rpn_cls, rpn_box, roi_props, roi_labels, roi_targets = [], [], [], [], []
        for i, (gt, lab) in enumerate(zip(boxes, labels)):
            gt, lab = gt.to(obj.device).float(), lab.to(obj.device).long()
            # RPN: IoU >= 0.7 positive, < 0.3 negative, and each object's best anchors positive
            a_lab = torch.zeros(len(anchors), device=obj.device)
            match = torch.zeros(len(anchors), dtype=torch.long, device=obj.device)
            if len(gt):
                iou = box_iou(anchors, gt)                                               # [N, M]
                best, match = iou.max(1)
                a_lab = torch.where(best >= 0.7, 1.0, torch.where(best < 0.3, 0.0, -1.0))
                gbest = iou.max(0).values                                                # [M]
                a_lab[((iou == gbest[None]) & (gbest[None] > 0)).any(1)] = 1.0
            pick = _sample(a_lab, self.rpn_batch, 0.5, generator)
            rpn_cls.append(F.binary_cross_entropy_with_logits(obj[i, pick], a_lab[pick], reduction="sum") / len(pick))
            pos = pick[a_lab[pick] == 1]
            if len(pos):
                t = encode(anchors[pos], gt[match[pos]], self.RPN_W)
                rpn_box.append(F.smooth_l1_loss(reg[i, pos], t, beta=1 / 9, reduction="sum") / len(pick))
            # box head: the proposals and the objects themselves, IoU >= 0.5 foreground
            p = torch.cat([props[i], gt])
            p_lab = torch.zeros(len(p), dtype=torch.long, device=obj.device)
            p_match = torch.zeros(len(p), dtype=torch.long, device=obj.device)
            if len(gt):
                best, p_match = box_iou(p, gt).max(1)
                p_lab = torch.where(best >= 0.5, lab[p_match] + 1, 0)
            keep = _sample(p_lab, self.roi_batch, 0.25, generator)
            roi_props.append(p[keep])
            roi_labels.append(p_lab[keep])
            roi_targets.append(encode(p[keep], gt[p_match[keep]], self.ROI_W) if len(gt) else p[keep] * 0)
        logits, deltas = self._box_head(feats, roi_props)
        y, t = torch.cat(roi_labels), torch.cat(roi_targets)
        fg = torch.nonzero(y > 0).squeeze(1)
        box_loss = (F.smooth_l1_loss(deltas[fg, y[fg] - 1], t[fg], beta=1.0, reduction="sum") / max(len(y), 1)
                    if len(fg) else deltas.sum() * 0)
        loss = (torch.stack(rpn_cls).mean() + (torch.stack(rpn_box).sum() / len(boxes) if rpn_box else obj.sum() * 0)
                + F.cross_entropy(logits, y) + box_loss)
        return loss, obj.new_zeros(len(boxes), 0, 5 + self.num_classes)  # no detections while training


class TwoStageDetector(EncoderDecoder):
    """``EncoderDecoder`` with a ``FasterRCNNHead``: ``forward`` detects; ``loss_and_output(batch)``
    (what ``methods/supervised.py`` calls) gives the two stages' losses for ``batch``'s boxes and labels."""

    rows_are_a_set = True  # rows follow proposals by score: export parity matches them as a set (outputs/detection.py)

    def loss_and_output(self, batch: dict) -> tuple[Tensor, Tensor]:
        x = batch["image"]
        feats = self.backbone.forward_intermediates(x, self.levels)
        return self.head.loss_and_output(feats, (int(x.shape[-2]), int(x.shape[-1])), batch["boxes"], batch["labels"])
