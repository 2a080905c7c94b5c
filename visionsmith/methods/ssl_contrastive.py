"""Contrastive self-supervised pretraining: SimCLR (Chen, Kornblith, Norouzi & Hinton, 2020,
"A Simple Framework for Contrastive Learning of Visual Representations", arXiv:2002.05709).

Each image of the batch gives two strongly augmented views (``ViewAugment``: random resized
crop + flip, colour distortion); backbone -> pooled features h -> projector MLP -> z; the NT-Xent
loss pulls the two views of an image together against every other view in the batch.  The
projector belongs to the method (saved in the resume state, not part of the backbone); the
representation that transfers is h, the projector's input (the paper's sec. 4.2).

Under DDP the negatives come from every rank: the projections are all-gathered (gradient kept,
``_GatherWithGrad``), so the loss is the one of the global batch, as in the paper.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import AugmentConfig, SSLConfig
from ..data import BatchTransform
from .registry import register_method
from .ssl import SSLMethod, pooled_features

_LUMA = (0.299, 0.587, 0.114)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, keys1: torch.Tensor | None = None,
            keys2: torch.Tensor | None = None, rank: int = 0) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy (SimCLR eq. 1), mean over anchors.

    z1, z2: [n, D] projections of the two views of n images (any scale: L2-normalised here).
    Every one of the 2n views is an anchor; its positive is the other view of its image, its
    negatives all other views (2n - 2 of them): ``-log(exp(s_pos / T) / sum_{k != self} exp(s_k / T))``
    with ``s`` the cosine similarity.
    keys1, keys2: [M, D] the views of the global batch (M = world * n) when gathered across ranks;
    this rank's images are rows ``rank * n ... rank * n + n - 1`` of them.  Default: z1, z2.
    """
    n = z1.shape[0]
    k1 = z1 if keys1 is None else keys1
    k2 = z2 if keys2 is None else keys2
    m = k1.shape[0]
    q = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2n, D] anchors
    keys = F.normalize(torch.cat([k1, k2]).float(), dim=1)  # [2M, D]
    logits = q @ keys.T / temperature  # [2n, 2M]
    own = rank * n + torch.arange(n, device=q.device)
    self_idx = torch.cat([own, m + own])
    positive = torch.cat([m + own, own])
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(2 * n, device=q.device), self_idx] = True
    return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), positive)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather that keeps the gradient: backward sums every rank's gradient for each slot
    (all_reduce) and returns this rank's slot.  [n, D] -> world x [n, D]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        g = torch.stack(grads)
        dist.all_reduce(g)
        return g[dist.get_rank()]


class ViewAugment:
    """A random view of a batch (SimCLR appendix A, without blur: at 28-32 px it erases the image).

    x: [0, 1] pixels, float [B, C, S, S] -> a view of the same shape, pixels in [0, 1]:
      1. random resized crop (area in ``crop_scale``, aspect 3/4..4/3) and horizontal flip, one
         affine warp per image (``BatchTransform.sample_params``);
      2. with p=0.8 colour distortion: brightness x b, contrast x c around the image
         mean, and for RGB saturation x s, each factor uniform in [1 - jitter, 1 + jitter];
      3. RGB only: gray with p = ``gray_p``.
    Every random number is drawn from the global CPU generator (the loop re-seeds it each step, so
    views are resume-exact), a fixed count per image whatever is switched off.
    """

    def __init__(self, cfg: SSLConfig):
        self.cfg = cfg
        self.crop = BatchTransform(True, 8, 1,  # only its sample_params is used
                                   AugmentConfig(hflip=cfg.hflip, scale=tuple(cfg.crop_scale), translate=0.0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        pix = x.float()
        theta = self.crop.sample_params(b, None).to(x.device)
        grid = F.affine_grid(theta, list(pix.shape), align_corners=False)
        pix = F.grid_sample(pix, grid, mode="bilinear", padding_mode="border", align_corners=False)
        u = torch.rand(b, 5).to(x.device)  # brightness, contrast, saturation, apply jitter, gray
        j = self.cfg.jitter
        f = 1 + j * (2 * u[:, :3] - 1)
        on = (u[:, 3] < 0.8).float()
        f = (on[:, None] * f + (1 - on[:, None])).view(b, 3, 1, 1)  # off: factors 1
        pix = pix * f[:, 0:1]
        m = pix.mean((1, 2, 3), keepdim=True)
        pix = (pix - m) * f[:, 1:2] + m
        if c == 3:
            gray = (pix * pix.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
            pix = (pix - gray) * f[:, 2:3] + gray
            to_gray = (u[:, 4] < self.cfg.gray_p).view(b, 1, 1, 1)
            pix = torch.where(to_gray, gray.clamp(0, 1).expand_as(pix), pix)
        out = pix.clamp(0, 1)
        if x.is_contiguous(memory_format=torch.channels_last):  # keep the loop's memory format
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(x.dtype)


class SimCLR(SSLMethod):
    """``forward({'image': [B,C,S,S], ...}) -> {'loss': [], 'output': [2B, D] features}``.

    ``projector``: Linear(D, proj_hidden) -> BatchNorm1d -> ReLU -> Linear(proj_hidden, proj_dim)
    (SimCLR v2's MLP with BN).  Both views go through the backbone as one batch of 2B, so batch
    norm sees both.  Views are made from the batch's [0, 1] pixels; the model normalises them.
    """

    def __init__(self, model: nn.Module, cfg: SSLConfig, task=None):
        super().__init__(model, cfg, task=task)
        d = model.num_features
        self.projector = nn.Sequential(nn.Linear(d, cfg.proj_hidden), nn.BatchNorm1d(cfg.proj_hidden),
                                       nn.ReLU(inplace=True), nn.Linear(cfg.proj_hidden, cfg.proj_dim))
        self.views = ViewAugment(cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["image"]
        h = pooled_features(self.model, torch.cat([self.views(x), self.views(x)]))  # [2B, D]
        z1, z2 = self.projector(h.float()).chunk(2)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            k1, k2 = torch.cat(_GatherWithGrad.apply(z1)), torch.cat(_GatherWithGrad.apply(z2))
            loss = nt_xent(z1, z2, self.cfg.temperature, k1, k2, dist.get_rank())
        else:
            loss = nt_xent(z1, z2, self.cfg.temperature)
        return {"loss": loss, "output": h}


@register_method("simclr", labels=False, trains_head=False)
def build(cfg, model, task, teacher=None):
    """SimCLR contrastive pretraining of the backbone."""
    return SimCLR(model, cfg.ssl, task)
