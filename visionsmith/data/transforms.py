"""Batched, seeded image transforms on tensors (no PIL, no per-sample Python loop).

Training augmentation is one affine warp per sample: random-resized-crop, translation and
horizontal flip are folded into a 2x3 matrix per image, and a single ``F.affine_grid`` +
``F.grid_sample`` call crops, flips, shifts and resizes the whole batch to ``image_size``.  All
random numbers come from the ``torch.Generator`` passed in (drawn on the generator's device,
usually the CPU, whatever device the images are on), so the same generator state gives
bit-identical batches: that is what makes a resumed run see exactly the batches the interrupted
one would have seen.

The output is [0, 1] pixels: normalisation with a model's mean/std happens inside the model (its
``pixel_norm``, see ``models/_base.py``), so every consumer (the loop, attacks, export, serving)
handles the same pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the same weights as Pillow's convert("L")
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # aspect range of the random crop
IGNORE = 255  # the mask value of pixels no loss or metric counts (outside the image, VOC boundaries)


class BatchTransform:
    """uint8 ``[B, C, h, w]`` -> float32 ``[B, in_chans, image_size, image_size]`` pixels in [0, 1].

    Steps: scale to [0, 1]; match channels (gray -> RGB by repeating, RGB -> gray by luma);
    train: per-sample random-resized-crop (area in ``augment.scale``, aspect in [3/4, 4/3]),
    shift of up to ``augment.translate`` of the side, horizontal flip with p=0.5 (pixels warped
    in from outside the image are black); eval: plain bilinear resize (antialiased when
    shrinking).  No normalisation: the model does that itself (``model.pixel_norm``).
    """

    def __init__(self, train: bool, image_size: int, in_chans: int, augment: AugmentConfig | None = None):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.train = train
        self.image_size = int(image_size)
        self.in_chans = in_chans
        self.augment = augment or AugmentConfig()

    def __repr__(self) -> str:
        return (f"BatchTransform(train={self.train}, image_size={self.image_size}, in_chans={self.in_chans}, "
                f"augment={self.augment})")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 masks: torch.Tensor | None = None):
        """images uint8 ``[B, C, h, w]`` (or float in [0, 1]) -> float32 pixels ``[B, in_chans, S, S]``
        (a new contiguous tensor, never ``images`` itself).

        ``generator`` feeds every random choice in training mode (None: the global RNG, which
        makes the batch unreproducible on resume); eval mode uses no randomness at all.
        ``masks``: uint8/int64 ``[B, h, w]`` class maps moved with the pixels; then the return value
        is ``(images, masks int64 [B, S, S])`` (see ``apply``).
        """
        out = self.apply(images, generator, masks=masks)
        return out["image"] if masks is None else (out["image"], out["mask"])

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None,
              masks: torch.Tensor | None = None, boxes: list[torch.Tensor] | None = None,
              min_side: float = 1.0) -> dict:
        """The images and their targets moved by the same per-sample matrix.

        -> ``{"image": float32 [B, in_chans, S, S]}`` ([0, 1] pixels, contiguous) plus, when given,
        ``"mask"``: int64 ``[B, S, S]`` from ``masks`` ``[B, h, w]`` (nearest neighbour, so labels are
        never blended; pixels warped in from outside the image get ``IGNORE``), and
        ``"boxes"`` / ``"keep"``: from ``boxes`` (per image float ``[M_i, 4]`` x1, y1, x2, y2 in input
        pixels): each box's corners mapped into the output, clipped to ``[0, S]``; ``keep[i]`` (bool
        ``[M_i]``) is False for a box left narrower or lower than ``min_side`` pixels (cropped away),
        and ``boxes[i]`` holds only the kept ones.
        """
        if images.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        in_hw = images.shape[-2:]
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        c = x.shape[1]
        if c == 3 and self.in_chans == 1:  # reduce before warping: a third of the work
            x = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif c != self.in_chans and c != 1:
            raise ValueError(f"cannot turn {c}-channel images into {self.in_chans} channels")
        theta = None
        if self.train:
            theta = self.sample_params(x.shape[0], generator)
            x = self._augment(x, theta)
        else:
            x = self._resize(x)
        if x.shape[1] != self.in_chans:  # 1 -> 3 after warping: the warp ran on one channel
            x = x.expand(-1, self.in_chans, -1, -1)
        # A new contiguous tensor (the expanded gray channels materialised; float input not aliased).
        out = {"image": x.clone(memory_format=torch.contiguous_format) if x is images else x.contiguous()}
        if masks is not None:
            out["mask"] = self._masks(masks, theta)
        if boxes is not None:
            out["boxes"], out["keep"] = self._boxes(boxes, theta, in_hw, min_side)
        return out

    def _boxes(self, boxes: list[torch.Tensor], theta: torch.Tensor | None, in_hw, min_side: float):
        """Per image ``[M, 4]`` xyxy input pixels -> (kept boxes ``[M', 4]`` in output pixels, keep ``[M]``).

        ``theta`` maps output to input coordinates in [-1, 1] units (``align_corners=False``: -1 and 1
        are the outer pixel edges), ``u = A u' + t``; a corner goes the other way, ``u' = A^-1 (u - t)``.
        The four corners are mapped and their bounding box taken, so a mirrored box stays x1 < x2."""
        s, (h, w) = self.image_size, (int(in_hw[0]), int(in_hw[1]))
        outs, keeps = [], []
        for i, b in enumerate(boxes):
            b = b.float().reshape(-1, 4)
            if theta is None:  # eval: a plain resize
                o = b * b.new_tensor([s / w, s / h, s / w, s / h])
            else:
                xs, ys = b[:, [0, 2, 0, 2]], b[:, [1, 1, 3, 3]]  # [M, 4] corners
                u = torch.stack([2 * xs / w - 1, 2 * ys / h - 1], -1)  # [M, 4, 2] input units
                a, t = theta[i, :, :2].to(b), theta[i, :, 2].to(b)
                uo = (u - t) @ torch.linalg.inv(a).T  # [M, 4, 2] output units
                po = (uo + 1) / 2 * s
                o = torch.cat([po.amin(1), po.amax(1)], 1)  # [M, 4] x1, y1, x2, y2
            o = o.clamp(0, s)
            keep = ((o[:, 2] - o[:, 0]) >= min_side) & ((o[:, 3] - o[:, 1]) >= min_side)
            outs.append(o[keep])
            keeps.append(keep)
        return outs, keeps

    def _masks(self, masks: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        """``[B, h, w]`` class maps -> int64 ``[B, S, S]``: warped by ``theta`` (train) or resized (eval),
        nearest neighbour.  Shifted by +1 so that grid_sample's zero padding marks 'outside' as -1."""
        s = self.image_size
        m = masks.unsqueeze(1).float() + 1  # [B, 1, h, w], 1.. K+1 (IGNORE -> 256)
        if theta is not None:
            grid = F.affine_grid(theta.to(m.device), [m.shape[0], 1, s, s], align_corners=False)
            m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        elif m.shape[-2:] != (s, s):
            m = F.interpolate(m, size=(s, s), mode="nearest")
        m = m[:, 0].long() - 1
        return torch.where(m < 0, torch.full_like(m, IGNORE), m)

    # -- eval ---------------------------------------------------------------------------------

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.shape[-2:] == (s, s):
            return x
        shrink = x.shape[-1] > s or x.shape[-2] > s
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrink)

    # -- train --------------------------------------------------------------------------------

    def sample_params(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """float32 ``[B, 2, 3]`` affine matrices (output -> input coordinates, in [-1, 1] units).

        Seven uniforms per sample are always drawn, whatever is switched off, so the generator
        advances by the same amount for every config.
        """
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch, 7, generator=generator, device=dev).cpu()
        lo, hi = self.augment.scale
        area = lo + (hi - lo) * u[:, 0]
        # Aspect ratio r, log-uniform within [3/4, 4/3] narrowed to [area, 1/area] so that the crop
        # (sqrt(area*r) x sqrt(area/r)) always fits: the area is exact and scale=(1, 1) is no crop.
        # (torchvision gets the same by rejection sampling, which costs a Python loop.)
        log_area = torch.log(area)
        lo_r = log_area.clamp(min=_LOG_RATIO[0])
        hi_r = (-log_area).clamp(max=_LOG_RATIO[1])
        ratio = torch.exp(lo_r + (hi_r - lo_r) * u[:, 1])
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop side as a fraction of the image side
        h = torch.sqrt(area / ratio).clamp(max=1.0)  # (the clamps only absorb rounding)
        cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre: anywhere that keeps the crop inside
        cy = (1 - h) * (2 * u[:, 3] - 1)
        t = 2 * self.augment.translate  # a fraction of the side is 2x that in [-1, 1] units
        cx = cx + t * (2 * u[:, 4] - 1)
        cy = cy + t * (2 * u[:, 5] - 1)
        flip = torch.where(u[:, 6] < 0.5, -1.0, 1.0) if self.augment.hflip else torch.ones(batch)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = w * flip  # a negative x scale mirrors the output left-right
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        return theta

    def _augment(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        # grid_sample does not antialias: bring large inputs down first so the smallest crop is
        # sampled about 1:1 and larger crops shrink by at most 1/sqrt(scale_min).
        pre = math.ceil(s / math.sqrt(self.augment.scale[0]))
        if min(x.shape[-2:]) > pre:
            x = F.interpolate(x, size=(pre, pre), mode="bilinear", align_corners=False, antialias=True)
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], s, s], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
