"""Scores of a generated image set against real images, in a feature space (``[N, D]`` float64).

- Frechet distance (Heusel et al. 2017): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between
  Gaussians fitted to the two feature sets.  Called "FID" only when the features are Inception-v3's;
  here the features are a Fashion-MNIST classifier's, so it is a Frechet *classifier* distance.
- Precision and recall (Kynkaenniemi et al. 2019): each set's manifold is the union of balls around
  its points reaching their k-th nearest neighbour; precision = share of generated points inside the
  real manifold (are samples realistic?), recall = share of real points inside the generated one
  (is the variety covered?).

Written with numpy/scipy: ``scipy.linalg.sqrtm`` is the standard route (torchmetrics and
pytorch-fid use it too), and the whole set is a few lines.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) in float64; rows are samples."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, s1) and N(mu2, s2).

    Tr((s1 s2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix s1^(1/2) s2 s1^(1/2) (the same eigenvalues as s1 s2): exact, and stable when a covariance
    is singular (fewer samples than feature dimensions), where ``scipy.linalg.sqrtm(s1 @ s2)`` warns
    and can return a complex result.  The test checks it against that direct route on full-rank data."""
    diff = mu1 - mu2
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # s1^(1/2)
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """[N] distance from each row of ``x`` to its k-th nearest other row."""
    d = _pairwise(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of ``fake`` [M, D] against ``real`` [N, D] with k-NN manifolds."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} images in each set")
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _pairwise(fake, real)  # [M, N]
    precision = (d <= r_real[None, :]).any(1).mean()
    recall = (d.T <= r_fake[None, :]).any(1).mean()
    return float(precision), float(recall)
