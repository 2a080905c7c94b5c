"""Learned image compression: an image in, a bitstream, the image back.

Shapes: a training batch is ``{"image": clean float [B, C, S, S], "target": the same}`` in [0, 1]
(``S = data.image_size``, a multiple of the model's ``stride``); the model (``models/codecs.py``:
``factorized``, ``hyperprior``) returns ``{"x_hat": [B, C, S, S], "likelihoods": {name: [B, ., h, w]}}``
and the loss is ``codec.lmbda * 255^2 * MSE + bits per pixel`` (the bits are ``-log2`` of the
likelihoods of the noise-relaxed latents).  Data: the photographs of the enhancement task
(``data/photos.py``): random crops with the 8 flips/turns in training, whole held-out photos at test.

Evaluation is real: every image is entropy-coded into the file ``visionsmith compress`` writes
(``ops/bitstream.py``, header included), decoded from those bytes alone, and scored as the decoded
8-bit image -- bits per pixel from the file's length, PSNR and MS-SSIM (``metrics/compression.py``),
and the rate the entropy model predicted (``bpp_estimated``) beside it.  The headline is the
rate-distortion loss at the run's ``lmbda`` (lower is better); the test evaluation also runs JPEG,
WebP, AVIF and JPEG 2000 on the same photographs (``ops/classical_codecs.py``), so one run says how
many bits each needs for this run's PSNR.  Curves over several runs: ``visionsmith rd``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..data.errors import DataError
from .base import Task, register_task


@register_task
class CompressionTask(Task):
    name = "compression"
    target_key = "target"
    headline = "rd"
    headline_label = "rate-distortion loss"
    direction = "min"
    val_keys = ("rd", "bpp", "psnr")
    test_keys = ("rd", "bpp", "psnr", "ms_ssim", "bpp_estimated")
    data_sources = ("photos", "images")
    has_classes = False

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        from ..data.photos import load_photos
        d = self.cfg.data
        bank = d.cache_size or (d.image_size * 3) // 2
        if bank < d.image_size:
            raise DataError(f"data.cache_size={bank} (the patch bank's side) must be >= data.image_size={d.image_size}")
        return load_photos(d, self.cfg.model.in_chans, bank, stride=d.image_size, seed=seed)

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models.codecs import create_codec
        m = self.cfg.model
        net = create_codec(m.name, in_chans=m.in_chans, **m.kwargs)
        if self.cfg.data.image_size % net.stride:
            raise DataError(f"data.image_size={self.cfg.data.image_size} must be a multiple of {net.stride} "
                            f"for model {m.name} (its latents are that much smaller than the image)")
        return net

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        from ..data.photos import training_crops
        train = bool(getattr(transform, "train", False))
        clean = training_crops(ds.images[idx], self.cfg.data.image_size, train, generator).float() / 255
        return {"image": clean, "target": clean}

    # -- training -----------------------------------------------------------------------------
    def rd_terms(self, out: dict, target: Tensor) -> dict:
        """The loss and its parts for a batch: bits per pixel (every latent), MSE on [0, 1], PSNR."""
        b, _, h, w = target.shape
        bpp = sum(-torch.log2(p).sum() for p in out["likelihoods"].values()) / (b * h * w)
        mse = F.mse_loss(out["x_hat"].float(), target)
        return {"loss": self.cfg.codec.lmbda * 255 ** 2 * mse + bpp, "bpp": bpp.detach(), "mse": mse.detach(),
                "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-10))}

    def loss(self, outputs: dict, batch: dict) -> Tensor:
        return self.rd_terms(outputs, batch["target"])["loss"]

    # -- coding -------------------------------------------------------------------------------
    @staticmethod
    def _pad(model: nn.Module, x: Tensor) -> Tensor:
        """[1, C, H, W] -> padded right and bottom (edge pixels repeated) to multiples of ``stride``."""
        s = model.stride
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % s, 0, -h % s), mode="replicate")

    @torch.no_grad()
    def encode(self, model: nn.Module, u8: Tensor) -> bytes:
        """uint8 [C, H, W] -> the file's bytes (``ops/bitstream.py``), in float32 (what decoding expects)."""
        from ..ops.bitstream import model_hash, pack
        x = self._pad(model, u8[None].float() / 255)
        streams = model.compress(x)
        return pack(model_hash(model), tuple(u8.shape), [streams[k] for k in model.latents])

    @torch.no_grad()
    def decode(self, model: nn.Module, data: bytes) -> Tensor:
        """The file's bytes -> uint8 [C, H, W]; ``BitstreamError`` for a file this model cannot decode."""
        from ..metrics.enhancement import to_u8
        from ..ops.bitstream import BitstreamError, model_hash, unpack
        (c, h, w), streams = unpack(data, model_hash(model))
        if c != model.in_chans or len(streams) != len(model.latents):
            raise BitstreamError(f"the file holds {c} channel(s) in {len(streams)} stream(s); this model codes "
                                 f"{model.in_chans} in {len(model.latents)}")
        s = 16  # y is 16 times smaller than the (padded) image
        hw = (math.ceil(h / model.stride) * model.stride // s, math.ceil(w / model.stride) * model.stride // s)
        try:
            x_hat = model.decompress(dict(zip(model.latents, streams)), hw)
        except (ValueError, RuntimeError) as e:  # the CRC passed but the coder could not follow the stream
            raise BitstreamError(f"the stream does not decode with this model ({e})") from None
        return to_u8(x_hat[0, :, :h, :w])

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]):
        return RDMetric(self.cfg.codec.lmbda)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ds, transform, batch_size: int, device: torch.device,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 progress: str | None = None, keep_outputs: bool = False, reduce: bool = False) -> dict:
        """Every image of the split coded to a file and decoded from it, one at a time on the CPU in
        float32 (the coder is on the CPU; float32 is what ``visionsmith decompress`` runs);
        ``outputs`` (with ``keep_outputs``): the decoded uint8 [C, H, W] images."""
        was_training = model.training
        model.eval()
        cpu = next(model.parameters()).device.type == "cpu"
        net = model if cpu else _cpu_copy(model)
        metric, kept = self.metric([]), []
        for i in tqdm(range(len(ds)), desc=progress, unit="img", leave=False, disable=progress is None):
            u8 = ds.images[i]
            data = self.encode(net, u8)
            dec = self.decode(net, data)
            x = self._pad(net, u8[None].float() / 255)
            est = sum(-torch.log2(p.double()).sum() for p in net(x)["likelihoods"].values())
            metric.update_image(dec, u8, len(data), float(est))
            if keep_outputs:
                kept.append(dec)
        model.train(was_training)
        m = metric.compute()
        m["per_image"] = [{"image": str(p), **r} for p, r in zip(ds.paths, metric.rows)]
        if keep_outputs:
            m["outputs"] = kept
        return m

    def eval_artifacts(self, run_dir, ds, outputs, m: dict) -> dict:
        """The classical codecs on the same images (``codec.baselines``): their curves, and the bits each
        needs for this run's PSNR; for the official evaluation ``eval_samples.npz``, a crop of every
        test image: original, this codec, and JPEG at the nearest file size."""
        from ..ops import classical_codecs as cc
        if not len(ds):
            return {}
        images = [ds.images[i] for i in range(len(ds))]
        extra: dict = {}
        if self.cfg.codec.baselines:
            curves = {fmt: cc.sweep(images, fmt) for fmt in self.cfg.codec.baselines}
            extra["baselines"] = curves
            extra["same_psnr_bpp"] = {fmt: _bpp_at(pts, m["psnr"]) for fmt, pts in curves.items()}
        if run_dir is not None and outputs:
            import numpy as np
            from .enhancement import centre_box
            crops = {"original": [], "output": [], "jpeg": []}
            jpeg_bpp = []
            for u8, dec, row in zip(images, outputs, m["per_image"]):
                q, nbytes, jpg = _jpeg_near(u8, row["bytes"])
                jpeg_bpp.append(nbytes * 8 / (u8.shape[1] * u8.shape[2]))
                y0, y1, x0, x1 = centre_box(u8.shape[-2:], 160)
                for k, t in (("original", u8), ("output", dec), ("jpeg", jpg)):
                    crops[k].append(t[:, y0:y1, x0:x1].numpy())
            np.savez_compressed(run_dir / "eval_samples.npz", names=np.array([str(p) for p in ds.paths]),
                                bpp=np.array([r["bpp"] for r in m["per_image"]]), jpeg_bpp=np.array(jpeg_bpp),
                                **{k: np.stack(v) for k, v in crops.items()})
        return extra

    def summary(self, m: dict) -> str:
        line = (f"{m['bpp']:.3f} bpp  PSNR {m['psnr']:.2f} dB  MS-SSIM {_num(m.get('ms_ssim'))}  "
                f"(entropy model's estimate {m['bpp_estimated']:.3f} bpp; rd {m['rd']:.4f})")
        same = m.get("same_psnr_bpp") or {}
        if same:
            line += "; for the same PSNR " + ", ".join(
                f"{fmt} needs {b:.3f} bpp" if b is not None else f"{fmt} does not reach it" for fmt, b in same.items())
        return line

    def per_class_lines(self, m: dict) -> list[str]:
        rows = m.get("per_image") or []
        if not rows:
            return []
        width = max(len(r["image"]) for r in rows)
        return [f"{'image':<{width}}  bpp    PSNR    MS-SSIM"] + [
            f"{r['image']:<{width}}  {r['bpp']:.3f}  {r['psnr']:6.2f}  {_num(r['ms_ssim'])}" for r in rows]


class RDMetric:
    """Per-image bits, PSNR and MS-SSIM, averaged over images at ``compute`` (as codec papers do)."""

    def __init__(self, lmbda: float):
        self.lmbda, self.rows = lmbda, []

    def update_image(self, decoded: Tensor, original: Tensor, nbytes: int, est_bits: float) -> None:
        from ..metrics.compression import image_scores
        px = original.shape[-2] * original.shape[-1]
        mse = (decoded.double() - original.double()).div(255).pow(2).mean().item()
        self.rows.append({"bytes": nbytes, "bpp": nbytes * 8 / px, "bpp_estimated": est_bits / px, "mse": mse,
                          **image_scores(decoded, original)})

    def update(self, outputs, batch) -> None:
        raise NotImplementedError("compression scores whole coded images: use update_image")

    def reduce(self) -> None:  # evaluation runs on one process
        pass

    def compute(self) -> dict:
        if not self.rows:
            return {"rd": float("nan"), "bpp": float("nan"), "psnr": float("nan"), "ms_ssim": None,
                    "bpp_estimated": float("nan")}
        mean = lambda k: sum(r[k] for r in self.rows) / len(self.rows)  # noqa: E731
        ms = [r["ms_ssim"] for r in self.rows if r["ms_ssim"] is not None]
        return {"rd": self.lmbda * 255 ** 2 * mean("mse") + mean("bpp"), "bpp": mean("bpp"), "psnr": mean("psnr"),
                "ms_ssim": sum(ms) / len(ms) if ms else None, "bpp_estimated": mean("bpp_estimated")}


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).float().cpu().eval()


def _bpp_at(points: list[dict], psnr: float) -> float | None:
    """The bits per pixel a classical codec's curve needs for ``psnr`` (log-linear between its points),
    None outside the curve."""
    pts = sorted((p["psnr"], math.log(p["bpp"])) for p in points)
    for (p0, r0), (p1, r1) in zip(pts, pts[1:]):
        if p0 <= psnr <= p1 and p1 > p0:
            return math.exp(r0 + (r1 - r0) * (psnr - p0) / (p1 - p0))
    return None


def _jpeg_near(u8: Tensor, nbytes: int) -> tuple[int, int, Tensor]:
    """The JPEG quality whose file is closest in size to ``nbytes``: (quality, its bytes, decoded uint8 [C, H, W])."""
    import numpy as np
    from ..ops.classical_codecs import round_trip
    hwc = np.ascontiguousarray(u8.permute(1, 2, 0).numpy())
    lo, hi, best = 1, 95, None
    while lo <= hi:  # file size grows with quality
        q = (lo + hi) // 2
        n, dec = round_trip(hwc, "jpeg", q)
        if best is None or abs(n - nbytes) < abs(best[1] - nbytes):
            best = (q, n, dec)
        lo, hi = (q + 1, hi) if n < nbytes else (lo, q - 1)
    return best[0], best[1], torch.from_numpy(best[2]).permute(2, 0, 1).contiguous()
