"""Classical restoration baselines, scored by the same code on the same degraded images as the network.

    results = run_baselines(pairs, "noise", sigma=25, scale=1, shave=0, tuned_on=val_pairs)
    results["nlm"]["scores"]     # {"psnr", "ssim", "psnr_y", "ssim_y", "images", "setting"}
    results["nlm"]["outputs"]    # per image float [1, C, H, W]

Denoising: non-local means, total variation (Chambolle) and wavelet (BayesShrink) from
scikit-image.  NLM's filter strength ``h`` and TV's weight are chosen on the validation images (never
on test) from a small grid; the wavelet method estimates its own thresholds.  The known sigma is
given to NLM and the wavelet method (the network does not get it: a fair edge to the baselines).
Super-resolution: bicubic interpolation (the same torch bicubic the networks add their detail to).
BM3D (PyPI ``bm3d``) is not here: its licence forbids redistribution; ``benchmarks/`` may add it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NLM_H = (0.4, 0.5, 0.6, 0.8, 1.0)  # h = factor x sigma
TV_WEIGHTS = (0.04, 0.06, 0.08, 0.11, 0.15)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).double().numpy()  # [1, C, H, W] -> [H, W, C] float64


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float().permute(2, 0, 1).unsqueeze(0)


def _nlm(x, sigma, factor):
    from skimage.restoration import denoise_nl_means
    s = sigma / 255
    return _chw(denoise_nl_means(_hwc(x), h=factor * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6,
                                 channel_axis=-1))


def _tv(x, sigma, weight):
    from skimage.restoration import denoise_tv_chambolle
    return _chw(denoise_tv_chambolle(_hwc(x), weight=weight, channel_axis=-1))


def _wavelet(x, sigma, _):
    from skimage.restoration import denoise_wavelet
    a = _hwc(x)
    color = a.shape[-1] == 3
    return _chw(denoise_wavelet(a, sigma=sigma / 255, method="BayesShrink", mode="soft", rescale_sigma=True,
                                channel_axis=-1, convert2ycbcr=color))


def _bicubic(x, scale, _):
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def _score(outputs, pairs, shave: int) -> dict:
    from ..metrics.enhancement import EnhanceMetric
    m = EnhanceMetric(shave)
    for y, (_, clean) in zip(outputs, pairs):
        m.update(y, {"target": clean})
    return m.compute()


def _sigma(x: torch.Tensor, sigma: float | None) -> float:
    if sigma:
        return float(sigma)
    from skimage.restoration import estimate_sigma  # Poisson or unknown noise: estimated per image
    return float(np.mean(estimate_sigma(_hwc(x), channel_axis=-1))) * 255


def methods_for(degradation: str, scale: int = 1) -> dict:
    """``{name: (fn(degraded [1, C, h, w], sigma or scale, setting) -> restored, settings to try)}``."""
    if degradation == "sr":
        return {"bicubic": (_bicubic, (scale,))}
    return {"nlm": (_nlm, NLM_H), "tv": (_tv, TV_WEIGHTS), "wavelet": (_wavelet, (None,))}


def run_baselines(pairs, degradation: str, sigma: float | None, scale: int, shave: int,
                  tuned_on=None) -> dict:
    """``{name: {"scores": {...}, "outputs": [...]}}`` for ``pairs`` of (degraded [1, C, h, w], clean
    [1, C, H, W]); ``tuned_on``: pairs (validation) to choose each method's setting on."""
    out = {}
    for name, (fn, grid) in methods_for(degradation, scale).items():
        setting = grid[0]
        if len(grid) > 1 and tuned_on:
            tries = {g: _score([fn(x, _sigma(x, sigma), g) for x, _ in tuned_on], tuned_on, shave)["psnr"] for g in grid}
            setting = max(tries, key=tries.get)
        outputs = [fn(x, _sigma(x, sigma) if degradation != "sr" else scale, setting) for x, _ in pairs]
        out[name] = {"scores": {**_score(outputs, pairs, shave), "setting": setting}, "outputs": outputs}
    return out
