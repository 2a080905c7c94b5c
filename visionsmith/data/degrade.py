"""Degradations that make an enhancement task's inputs from clean images, as 8-bit images.

    noisy = gaussian_noise(clean, sigma=25, generator=g)      # [B, C, H, W] in [0, 1] -> the same shape
    noisy = poisson_noise(clean, peak=30, generator=g)
    low = downscale(clean, 2)                                 # [B, C, H, W] -> [B, C, H/2, W/2]

Every result is clamped and rounded to 8 bits, like the image file a user would hand to
``visionsmith enhance``: the network trains and is scored on exactly what files hold.  (Papers that
add unclipped float noise report PSNRs a few tenths of a dB apart from these; the classical
baselines here see the same 8-bit inputs, so the comparison is like for like.)  ``sigma`` is on the
0-255 scale; a tensor of ``[B]`` sigmas gives each image its own (blind training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> the nearest 8-bit levels (still float in [0, 1])."""
    return (x.clamp(0, 1) * 255).round() / 255


def gaussian_noise(clean: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=clean.dtype) / 255.0
    if s.dim() == 1:
        s = s.view(-1, *([1] * (clean.dim() - 1)))  # [B] -> [B, 1, 1, 1]
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return quantize(clean + s * noise)


def poisson_noise(clean: torch.Tensor, peak: float, generator: torch.Generator | None) -> torch.Tensor:
    """Shot noise: photon counts ~ Poisson(peak x pixel), scaled back (lower ``peak``: noisier)."""
    return quantize(torch.poisson(clean * peak, generator=generator) / peak)


def downscale(clean: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic with antialiasing (as MATLAB's ``imresize`` and Pillow), then 8 bits.  H and W must be
    multiples of ``scale`` (``modcrop``)."""
    if clean.shape[-1] % scale or clean.shape[-2] % scale:
        raise ValueError(f"image side {tuple(clean.shape[-2:])} is not a multiple of the scale {scale}")
    low = F.interpolate(clean, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return quantize(low)


def modcrop(u8: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop [..., H, W] to multiples of ``scale`` (top-left kept), the usual super-resolution set-up."""
    h, w = u8.shape[-2] - u8.shape[-2] % scale, u8.shape[-1] - u8.shape[-1] % scale
    return u8[..., :h, :w]
