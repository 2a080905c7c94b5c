"""PSNR and SSIM of restored images, on RGB and on luma (Y), and their accumulator.

    psnr(pred_u8, ref_u8)            # dB; uint8 [C, H, W] each (what a saved PNG holds)
    ssim(pred_u8, ref_u8)            # mean SSIM over the channels (Wang et al. 2004)
    luma(u8 [3, H, W]) -> float [1, H, W] on 0..255: ITU-R BT.601 Y (16..235), as MATLAB's rgb2ycbcr

Conventions, the ones super-resolution and denoising papers use, so numbers compare:
- images are scored as 8-bit images: the network's output is clamped to [0, 1] and rounded to 8
  bits first (the file a user gets), against the clean 8-bit photograph;
- SSIM: Gaussian window sigma 1.5 (11 taps), K1 0.01, K2 0.03, population covariances, averaged
  over the "valid" pixels whose window lies inside the image, and over channels;
- ``shave``: pixels cut from each border before scoring (super-resolution: the scale factor).
scikit-image's ``peak_signal_noise_ratio`` and ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`` give the same numbers (tests/test_enhancement_metrics.py).
This is written in torch rather than calling scikit-image per image so a 500 x 500 photo scores in
milliseconds, and rather than torchmetrics because its SSIM pads the border by reflection (about
6e-4 off scikit-image's on a 200 x 256 photo).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_Y_WEIGHTS = torch.tensor([65.481, 128.553, 24.966]) / 255.0  # BT.601 on 0..255 input, + 16


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] (any range) -> uint8, clamped and rounded (what a PNG of them holds)."""
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def luma(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> float64 [1, H, W]: BT.601 luma on 0..255 (16..235); a 1-channel image as is."""
    x = u8.double()
    if x.shape[0] == 1:
        return x
    return (16.0 + torch.einsum("c,chw->hw", _Y_WEIGHTS.double(), x)).unsqueeze(0)


def _shave(x: torch.Tensor, shave: int) -> torch.Tensor:
    return x[..., shave:x.shape[-2] - shave, shave:x.shape[-1] - shave] if shave else x


def psnr(pred: torch.Tensor, ref: torch.Tensor, shave: int = 0, data_range: float = 255.0) -> float:
    """PSNR in dB of ``pred`` against ``ref`` ([C, H, W], uint8 or float on 0..``data_range``)."""
    mse = (_shave(pred.double(), shave) - _shave(ref.double(), shave)).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def _gauss(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, 1, H, W] each -> (the SSIM map, its contrast-structure part), both [N, 1, H-10, W-10]:
    Gaussian window (sigma 1.5, 11 taps), valid pixels only."""
    g = _gauss().to(x.dtype)
    if min(x.shape[-2:]) < len(g):
        raise ValueError(f"SSIM needs an image of at least {len(g)} x {len(g)} pixels, got {tuple(x.shape[-2:])}")

    def blur(z):  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    return (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs, cs


def ssim(pred: torch.Tensor, ref: torch.Tensor, shave: int = 0, data_range: float = 255.0) -> float:
    """Mean SSIM of ``pred`` against ``ref`` ([C, H, W] on 0..``data_range``), averaged over channels."""
    x = _shave(pred.double(), shave).unsqueeze(1)  # [C, 1, H, W]: channels scored separately
    y = _shave(ref.double(), shave).unsqueeze(1)
    s, _ = ssim_maps(x, y, data_range)
    return s.mean(dim=(1, 2, 3)).mean().item()


class EnhanceMetric:
    """Per-image PSNR/SSIM on RGB and Y, averaged over the images (the usual "mean PSNR").

    ``update(outputs, batch)``: ``outputs`` float [B, C, H, W] (or a list of [C, H, W]) in [0, 1],
    ``batch["target"]`` the clean images the same way.  ``reduce()`` sums across DDP ranks."""

    keys = ("psnr", "ssim", "psnr_y", "ssim_y")

    def __init__(self, shave: int = 0):
        self.shave = shave
        self.sums = torch.zeros(len(self.keys), dtype=torch.float64)
        self.n = 0
        self.per_image: list[dict] = []

    def update(self, outputs, batch: dict) -> None:
        for out, ref in zip(outputs, batch["target"]):
            p, r = to_u8(out), to_u8(ref)
            row = {"psnr": psnr(p, r, self.shave), "ssim": ssim(p, r, self.shave),
                   "psnr_y": psnr(luma(p), luma(r), self.shave), "ssim_y": ssim(luma(p), luma(r), self.shave)}
            self.sums += torch.tensor([min(row[k], 100.0) for k in self.keys], dtype=torch.float64)
            self.n += 1
            self.per_image.append(row)

    def reduce(self) -> None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            t = torch.cat([self.sums, torch.tensor([float(self.n)], dtype=torch.float64)])
            dist.all_reduce(t)
            self.sums, self.n = t[:-1], int(t[-1].item())

    def compute(self) -> dict:
        n = max(self.n, 1)
        return {k: float(v) / n for k, v in zip(self.keys, self.sums.tolist())} | {"n": self.n}
