"""Image enhancement: denoising and super-resolution.  Pixels in, pixels out.

Shapes: a training batch is ``{"image": degraded float [B, C, s, s], "target": clean float [B, C, S, S]}``
in [0, 1], where ``S = data.image_size`` and ``s = S`` (denoising) or ``S / enhance.scale``
(super-resolution); the model (``models/enhancers.py``: ``dncnn``, ``edsr``, ``espcn``) maps the
first to the second.  Data: clean photographs (``data/photos.py``), the degradation made on the fly
(``data/degrade.py``) from the loop's generator in training, and from ``enhance.eval_seed`` for
val/test so every run and every classical baseline sees the same noisy images.  Evaluation runs
whole photographs of any size through tiled inference (``ops/tiles.py``).  Metrics: PSNR and SSIM
on RGB and on luma Y (``metrics/enhancement.py``), a border of ``scale`` pixels left out for
super-resolution; the headline is PSNR on RGB, with PSNR on Y beside it (super-resolution papers
quote Y).
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..data import degrade
from ..data.errors import DataError
from .base import Task, per_image_table, register_task

SOURCES = ("photos", "images")


@register_task
class EnhancementTask(Task):
    name = "enhancement"
    target_key = "target"
    headline = "psnr"
    headline_label = "PSNR (dB)"
    val_keys = ("psnr", "ssim")
    test_keys = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_input")
    data_sources = SOURCES
    has_classes = False

    @property
    def scale(self) -> int:
        e = self.cfg.enhance
        return e.scale if e.degradation == "sr" else 1

    @property
    def shave(self) -> int:
        """Border pixels left out of the scores: the scale for super-resolution, as papers do."""
        return self.scale if self.scale > 1 else 0

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        from ..data.photos import load_photos
        d = self.cfg.data
        if d.image_size % self.scale:
            raise DataError(f"data.image_size={d.image_size} must be a multiple of enhance.scale={self.scale}")
        bank = d.cache_size or (d.image_size * 3) // 2  # patches the training crops are cut from
        if bank < d.image_size:
            raise DataError(f"data.cache_size={bank} (the patch bank's side) must be >= data.image_size={d.image_size}")
        return load_photos(d, self.cfg.model.in_chans, bank, stride=d.image_size, seed=seed)

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models.enhancers import create_enhancer
        m = self.cfg.model
        folder = m.pretrained if isinstance(m.pretrained, str) else None  # reloading a run: its architecture only
        return create_enhancer(m.name, in_chans=m.in_chans, scale=self.scale, folder=folder,
                               weights=pretrained is not False, **m.kwargs)

    def degrade(self, clean: Tensor, generator: torch.Generator | None, train: bool) -> Tensor:
        """clean float [B, C, S, S] in [0, 1] -> the network's input (8-bit levels, data/degrade.py)."""
        e = self.cfg.enhance
        if e.degradation == "sr":
            return degrade.downscale(clean, e.scale)
        if e.noise == "poisson":
            return degrade.poisson_noise(clean, e.peak, generator)
        sigma = e.sigma
        if train and e.sigma_max > 0:  # blind: each image its own noise level
            sigma = torch.rand(clean.shape[0], generator=generator, dtype=clean.dtype) * e.sigma_max
        return degrade.gaussian_noise(clean, sigma, generator)

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """Training: a random ``image_size`` crop of each patch, a random flip and quarter turn (the
        8 symmetries of the square), then the degradation, all drawn from ``generator``."""
        from ..data.photos import training_crops
        train = bool(getattr(transform, "train", False))
        u8 = training_crops(ds.images[idx], self.cfg.data.image_size, train, generator)
        clean = u8.float() / 255
        return {"image": self.degrade(clean, generator, train), "target": clean}

    EXPORT_CROP = 256  # clean pixels on a side of each held-out photo an export is checked on

    def export_batch(self, ds, idx: Tensor, transform, generator: torch.Generator) -> dict:
        """Degraded inputs and clean targets for an export: the training bank's centre crops as training
        shows them, or a centre crop of ``EXPORT_CROP`` pixels of each whole photograph (held-out
        photos differ in size; the crop is larger than the training size, so the exported graph's free
        height and width are exercised)."""
        if not isinstance(ds.images, list):
            return self.make_batch(ds, idx, transform, generator)
        side = self.EXPORT_CROP - self.EXPORT_CROP % self.scale
        crops = []
        for i in idx.tolist():
            u8 = ds.images[i]
            if min(u8.shape[-2:]) < side:
                raise DataError(f"{ds.paths[i]} is smaller than {side} pixels on a side: too small to check an export on")
            y0, y1, x0, x1 = centre_box(u8.shape[-2:], side)
            crops.append(u8[:, y0:y1, x0:x1])
        clean = torch.stack(crops).float() / 255
        return {"image": self.degrade(clean, generator, train=False), "target": clean}

    # -- training -----------------------------------------------------------------------------
    def loss(self, outputs: Tensor, batch: dict) -> Tensor:
        """``enhance.loss`` between the restored [B, C, S, S] and the clean target."""
        diff = outputs.float() - batch["target"]
        kind = self.cfg.enhance.loss
        if kind == "mse":
            return diff.pow(2).mean()
        if kind == "charbonnier":
            return torch.sqrt(diff * diff + 1e-6).mean()
        return diff.abs().mean()

    # -- inference ----------------------------------------------------------------------------
    def run_image(self, model: nn.Module, x: Tensor, amp_dtype: torch.dtype | None = None,
                  channels_last: bool = False) -> Tensor:
        """One degraded image float [1, C, H, W] -> the restored float [1, C, sH, sW] (unclamped),
        tile by tile (``enhance.tile``), exactly as the whole image would be."""
        from ..ops.tiles import tiled
        device = next(model.parameters()).device

        def fn(t):
            t = t.to(device)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                return model(t).float().cpu()

        return tiled(fn, x, self.cfg.enhance.tile, pad=int(getattr(model, "receptive_radius", 16)), scale=self.scale,
                     align=int(getattr(model, "align", 1)))

    @staticmethod
    def too_small(model: nn.Module, width: int, height: int) -> str | None:
        """Why an image of this size cannot be restored (smaller than the network's receptive field), or None."""
        radius = int(getattr(model, "receptive_radius", 1))
        if min(width, height) >= radius:
            return None
        return (f"{width}x{height} pixels is smaller than the network's receptive field ({radius} pixels on a "
                "side): too little image to restore")

    def degraded_split(self, ds) -> list[tuple[Tensor, Tensor]]:
        """(degraded float [1, C, h, w], clean float [1, C, H, W]) per image of an evaluation split, the
        noise drawn from ``enhance.eval_seed`` and the image's index: the same inputs every time."""
        out = []
        for i in range(len(ds)):
            u8 = ds.images[i]
            if self.scale > 1:
                u8 = degrade.modcrop(u8, self.scale)
            clean = u8.unsqueeze(0).float() / 255
            g = torch.Generator().manual_seed(self.cfg.enhance.eval_seed * 1_000_003 + i)
            out.append((self.degrade(clean, g, train=False), clean))
        return out

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]):
        from ..metrics.enhancement import EnhanceMetric
        return EnhanceMetric(self.shave)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ds, transform, batch_size: int, device: torch.device,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 progress: str | None = None, keep_outputs: bool = False, reduce: bool = False) -> dict:
        """Whole images one at a time (they differ in size), tiled; ``outputs`` (with ``keep_outputs``)
        is the list of restored images float [C, sH, sW]."""
        was_training = model.training
        model.eval()
        metric, kept, first_in = self.metric([]), [], []
        pairs = self.degraded_split(ds)
        for x, clean in tqdm(pairs, desc=progress, unit="img", leave=False, disable=progress is None):
            y = self.run_image(model, x, amp_dtype, channels_last)
            metric.update(y, {"target": clean})
            first_in.append(self._input_psnr(x, clean))
            if keep_outputs:
                kept.append(y[0])
        model.train(was_training)
        if reduce:
            metric.reduce()
        m = metric.compute()
        m["psnr_input"] = sum(first_in) / max(len(first_in), 1)
        m["per_image"] = [{"image": str(p), **r} for p, r in zip(ds.paths, metric.per_image)]
        if keep_outputs:  # the test evaluation (not the per-epoch validation): the noise-level table too
            m["outputs"] = kept
            sweep = self.sweep_sigmas()
            if sweep:
                m["by_sigma"] = [self._row_at(s, m) if s == self.cfg.enhance.sigma else
                                 self._row_at(s, self.at_sigma(s).evaluate(model, ds, transform, batch_size, device,
                                                                           channels_last, amp_dtype))
                                 for s in sweep]
        return m

    def sweep_sigmas(self) -> list[float]:
        """``enhance.eval_sigmas`` for Gaussian denoising, else none."""
        e = self.cfg.enhance
        return list(e.eval_sigmas) if e.degradation == "noise" and e.noise == "gaussian" else []

    def at_sigma(self, sigma: float) -> "EnhancementTask":
        """This task scoring at another Gaussian noise level (the same seeded noise, scaled)."""
        enhance = dataclasses.replace(self.cfg.enhance, sigma=float(sigma), eval_sigmas=[])
        return type(self)(dataclasses.replace(self.cfg, enhance=enhance))

    @staticmethod
    def _row_at(sigma: float, m: dict) -> dict:
        return {"sigma": float(sigma), **{k: m[k] for k in ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_input")}}

    def _input_psnr(self, x: Tensor, clean: Tensor) -> float:
        """The degraded input's own score: noisy vs clean, or bicubic upsampling vs clean."""
        from ..metrics.enhancement import psnr, to_u8
        base = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return psnr(to_u8(base[0]), to_u8(clean[0]), shave=self.shave)

    def eval_artifacts(self, run_dir, ds, outputs, m: dict) -> dict:
        """The classical baselines on the same degraded images (``enhance.baselines``), and for the
        official evaluation ``eval_samples.npz``: a crop of every test image degraded, by the best
        baseline, restored, and clean (the report's side-by-side)."""
        from ..metrics.enhancement import to_u8
        from ..ops.classical import run_baselines
        e, extra = self.cfg.enhance, {}
        pairs = self.degraded_split(ds) if len(ds) else []
        results = {}
        if e.baselines and pairs:
            sigma = e.sigma if e.degradation == "noise" and e.noise == "gaussian" else None
            val = self._val()
            results = run_baselines(pairs, e.degradation, sigma, self.scale, self.shave,
                                    tuned_on=self.degraded_split(val))
            extra["baselines"] = {k: v["scores"] for k, v in results.items()}
            for row in m.get("by_sigma") or []:  # the same methods at each noise level of the table
                if row["sigma"] == e.sigma:
                    row["baselines"] = extra["baselines"]
                    continue
                at = self.at_sigma(row["sigma"])
                row["baselines"] = {k: v["scores"] for k, v in run_baselines(
                    at.degraded_split(ds), "noise", row["sigma"], 1, 0, tuned_on=at.degraded_split(val)).items()}
        if run_dir is not None and pairs and outputs:
            import numpy as np
            best = max(results, key=lambda k: results[k]["scores"]["psnr"]) if results else None
            crops = {"input": [], "output": [], "clean": [], "baseline": []}
            for i, ((x, clean), y) in enumerate(zip(pairs, outputs)):
                up = x if self.scale == 1 else F.interpolate(x, scale_factor=self.scale, mode="nearest")
                box = centre_box(clean.shape[-2:], 128)
                for key, t in (("input", up[0]), ("output", y), ("clean", clean[0]),
                               ("baseline", results[best]["outputs"][i][0] if best else clean[0])):
                    crops[key].append(to_u8(t[:, box[0]:box[1], box[2]:box[3]]).numpy())
            np.savez_compressed(run_dir / "eval_samples.npz", names=np.array([str(p) for p in ds.paths]),
                                baseline_name=np.array(best or ""), **{k: np.stack(v) for k, v in crops.items()})
        return extra

    def _val(self):
        """The validation crops (baselines tune their strength on them, never on test)."""
        return self.build_datasets(self.cfg.seed)["val"]

    def postprocess_settings(self) -> dict:
        e = self.cfg.enhance
        return {"degradation": e.degradation, "scale": self.scale, "tile": e.tile,
                **({"sigma": e.sigma} if e.degradation == "noise" and e.noise == "gaussian" else {})}

    def summary(self, m: dict) -> str:
        line = (f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  PSNR-Y {m['psnr_y']:.2f} dB  "
                f"(degraded input {m['psnr_input']:.2f} dB)")
        for name, s in (m.get("baselines") or {}).items():
            line += f"  {name} {s['psnr']:.2f} (Y {s['psnr_y']:.2f})"
        for row in m.get("by_sigma") or []:
            nlm = (row.get("baselines") or {}).get("nlm")
            line += f"\n  sigma {row['sigma']:g}: PSNR {row['psnr']:.2f} dB" + (f" (nlm {nlm['psnr']:.2f})" if nlm else "")
        return line

    def per_class_lines(self, m: dict) -> list[str]:
        return per_image_table(m.get("per_image") or [], "PSNR    SSIM    PSNR-Y",
                               lambda r: f"{r['psnr']:6.2f}  {r['ssim']:.4f}  {r['psnr_y']:6.2f}")


def centre_box(hw, side: int) -> tuple[int, int, int, int]:
    h, w = int(hw[0]), int(hw[1])
    sh, sw = min(side, h), min(side, w)
    y, x = (h - sh) // 2, (w - sw) // 2
    return y, y + sh, x, x + sw
