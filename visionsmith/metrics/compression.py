"""Scores of a codec: bits per pixel, PSNR and MS-SSIM of the decoded 8-bit image, and the
Bjontegaard delta rate between two rate-distortion curves.

    image_scores(decoded_u8, original_u8)    # {"psnr": dB on RGB, "ms_ssim": in [0, 1] or None}
    bd_rate(anchor, test, lo=0.2, hi=1.5)    # % bits the test codec saves (negative) at equal PSNR

PSNR is on RGB over all channels at once (as CompressAI and the learned-compression papers report
it); MS-SSIM (Wang, Simoncelli, Bovik 2003: five scales, the published weights, data range 255) on
RGB needs more than 160 pixels on the shorter side (four halvings of an 11-tap window) and is None
below that.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .enhancement import psnr

MS_SSIM_MIN_SIDE = 161


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, scales fine to coarse


def ms_ssim(pred_u8: torch.Tensor, ref_u8: torch.Tensor) -> float | None:
    """MS-SSIM of two uint8 [C, H, W] images, the convention of ``pytorch_msssim`` (what CompressAI
    reports): per channel, contrast-structure at the four finer scales and SSIM at the coarsest,
    each clipped at 0, 2x2 average pooling between scales (zero-padded when a side is odd), the
    weighted geometric mean, averaged over channels; None when the image is too small for five
    scales.  Written here on the valid-window SSIM of ``metrics/enhancement.py`` because the
    library implementations took 0.4-1.3 s per 512 x 512 image on two cores (this: milliseconds);
    tests/test_compression_metrics.py checks it against ``pytorch_msssim``."""
    import torch.nn.functional as F
    from .enhancement import ssim_maps
    if min(ref_u8.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    x, y = pred_u8.double().unsqueeze(1), ref_u8.double().unsqueeze(1)  # [C, 1, H, W]
    value = torch.ones(x.shape[0], dtype=torch.float64)
    for i, w in enumerate(MS_SSIM_WEIGHTS):
        s, cs = ssim_maps(x, y)
        last = i == len(MS_SSIM_WEIGHTS) - 1
        value = value * torch.relu((s if last else cs).mean(dim=(1, 2, 3))) ** w
        if not last:
            pad = [x.shape[-2] % 2, x.shape[-1] % 2]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    return float(value.mean())


def image_scores(pred_u8: torch.Tensor, ref_u8: torch.Tensor) -> dict:
    return {"psnr": psnr(pred_u8, ref_u8), "ms_ssim": ms_ssim(pred_u8, ref_u8)}


def _curve(points: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(distortion increasing, log bpp) of a curve, duplicates and non-monotone points dropped."""
    pts = sorted((p[key], math.log(p["bpp"])) for p in points if p.get(key) is not None and p["bpp"] > 0)
    d, r = [], []
    for x, y in pts:
        if not d or (x > d[-1] and y > r[-1]):  # a codec's curve: more bits, more quality
            d.append(x)
            r.append(y)
    return np.array(d), np.array(r)


def rate_at(points: list[dict], quality: float, key: str = "psnr") -> float | None:
    """The bits per pixel a codec's curve needs for ``quality`` (log rate linear between its points),
    None outside the curve."""
    d, r = _curve(points, key)
    if len(d) < 2 or not d[0] <= quality <= d[-1]:
        return None
    return float(math.exp(np.interp(quality, d, r)))


def bd_rate(anchor: list[dict], test: list[dict], key: str = "psnr", lo: float = 0.2, hi: float = 1.5) -> float | None:
    """Bjontegaard delta rate (VCEG-M33, 2001) of ``test`` against ``anchor`` in percent: the mean
    difference of log rate at equal quality, over the quality range both curves cover while their
    rates lie in [lo, hi] bpp.  Curves are piecewise-cubic Hermite interpolants (the form current
    codec comparisons use instead of the original cubic fit, which overshoots between far points).
    None when the curves share no quality range there or have fewer than two points."""
    from scipy.interpolate import PchipInterpolator
    spans, fits = [], []
    for pts in (anchor, test):
        d, r = _curve(pts, key)
        if len(d) < 2:
            return None
        fit = PchipInterpolator(d, r)
        inv = PchipInterpolator(r, d)  # quality at a given log rate
        a = float(inv(np.clip(math.log(lo), r[0], r[-1])))
        b = float(inv(np.clip(math.log(hi), r[0], r[-1])))
        spans.append((a, b))
        fits.append(fit)
    start, end = max(s[0] for s in spans), min(s[1] for s in spans)
    if end - start <= 1e-9:
        return None
    mean = [(f.integrate(start, end)) / (end - start) for f in fits]
    return float((math.exp(mean[1] - mean[0]) - 1) * 100)
