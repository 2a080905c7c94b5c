"""Learned image compression: an image in, a bitstream, the image back.

Shapes: a training batch is ``{"image": clean float [B, C, S, S], "target": the same}`` in [0, 1]
(``S = data.image_size``, a multiple of the model's ``stride``); the model (``models/codecs.py``:
``factorized``, ``hyperprior``) returns ``{"x_hat": [B, C, S, S], "likelihoods": {name: [B, ., h, w]}}``
and the loss is ``lmbda * 255^2 * MSE + bits per pixel`` (the bits are ``-log2`` of the likelihoods
of the noise-relaxed latents).  With several ``codec.lmbdas`` each training image draws a rate
level (``batch["level"]``) and its lmbda: one variable-rate model, one curve per run.  Data: the
photographs of the enhancement task (``data/photos.py``): random crops with the 8 flips/turns in
training, whole held-out photos at test.

Evaluation is real: every image is entropy-coded into the file ``visionsmith compress`` writes
(``ops/bitstream.py``, header included), decoded from those bytes alone, and scored as the decoded
8-bit image -- bits per pixel from the file's length, PSNR and MS-SSIM (``metrics/compression.py``),
and the rate the entropy model predicted (``bpp_estimated``) beside it.  The headline is the
rate-distortion loss averaged over the levels (lower is better); the test evaluation also runs JPEG,
WebP, AVIF and JPEG 2000 on the same photographs (``ops/classical_codecs.py``) and reports the
Bjontegaard delta rate of the run's curve against each.  Several runs on one plot: ``visionsmith rd``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ConfigError, add_check
from ..data.errors import DataError
from .base import Task, per_image_table, register_task


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
        # patches every half crop side: an epoch shows each part of a photo about four times as often as
        # enhancement's bank does, so validation (every level coded for real) costs less of the run
        return load_photos(d, self.cfg.model.in_chans, bank, stride=max(d.image_size // 2, 1), seed=seed)

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        from ..models.codecs import create_codec
        m = self.cfg.model
        net = create_codec(m.name, in_chans=m.in_chans, lmbdas=self.cfg.codec.lmbdas, **m.kwargs)
        if self.cfg.data.image_size % net.stride:
            raise DataError(f"data.image_size={self.cfg.data.image_size} must be a multiple of {net.stride} "
                            f"for model {m.name} (its latents are that much smaller than the image)")
        return net

    def make_batch(self, ds, idx: Tensor, transform, generator: torch.Generator | None) -> dict:
        """Training: random crops with flips and turns, and each image's rate level drawn from
        ``generator`` (a variable-rate model learns every rate from the same batches)."""
        from ..data.photos import training_crops
        train = bool(getattr(transform, "train", False))
        clean = training_crops(ds.images[idx], self.cfg.data.image_size, train, generator).float() / 255
        levels = len(self.cfg.codec.lmbdas)
        level = torch.randint(levels, (len(idx),), generator=generator) if train else torch.zeros(len(idx), dtype=torch.long)
        return {"image": clean, "target": clean, "level": level}

    # -- training -----------------------------------------------------------------------------
    def rd_terms(self, out: dict, target: Tensor, level: Tensor) -> dict:
        """The loss and its parts for a batch: per image ``lmbda[level] * 255^2 * MSE + bits / pixels``,
        averaged; the mean bits per pixel (every latent), MSE on [0, 1] and PSNR beside it."""
        b, _, h, w = target.shape
        bpp = sum(-torch.log2(p).flatten(1).sum(1) for p in out["likelihoods"].values()) / (h * w)  # [B]
        mse = (out["x_hat"].float() - target).pow(2).flatten(1).mean(1)  # [B]
        lam = torch.tensor(self.cfg.codec.lmbdas, device=target.device)[level.to(target.device)]
        loss = (lam * 255 ** 2 * mse + bpp).mean()
        return {"loss": loss, "bpp": bpp.mean().detach(), "mse": mse.mean().detach(),
                "psnr": -10 * torch.log10(mse.mean().detach().clamp_min(1e-10))}

    def loss(self, outputs: dict, batch: dict) -> Tensor:
        return self.rd_terms(outputs, batch["target"], batch["level"])["loss"]

    # -- coding -------------------------------------------------------------------------------
    @staticmethod
    def _pad(model: nn.Module, x: Tensor) -> Tensor:
        """[1, C, H, W] -> padded right and bottom (edge pixels repeated) to multiples of ``stride``."""
        s = model.stride
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % s, 0, -h % s), mode="replicate")

    @torch.no_grad()
    def encode(self, model: nn.Module, u8: Tensor, level: int, mhash: bytes | None = None) -> bytes:
        """uint8 [C, H, W] at rate ``level`` -> the file's bytes (``ops/bitstream.py``), in float32 on
        the CPU (what decoding expects); ``mhash``: the model's ``model_hash``, when already known."""
        from ..ops.bitstream import model_hash, pack
        if not 0 <= level < model.levels:
            raise ValueError(f"level {level} is not one of this model's rates (0 .. {model.levels - 1})")
        x = self._pad(model, u8[None].float() / 255)
        streams = model.compress(x, level)
        return pack(mhash or model_hash(model), tuple(u8.shape), level, [streams[k] for k in model.latents])

    @torch.no_grad()
    def decode(self, model: nn.Module, data: bytes, mhash: bytes | None = None) -> tuple[Tensor, int]:
        """The file's bytes -> (uint8 [C, H, W], its rate level); ``BitstreamError`` for a file this
        model cannot decode."""
        from ..metrics.enhancement import to_u8
        from ..ops.bitstream import BitstreamError, model_hash, unpack
        (c, h, w), level, streams = unpack(data, mhash or model_hash(model))
        if c != model.in_chans or len(streams) != len(model.latents) or level >= model.levels:
            raise BitstreamError(f"the file holds {c} channel(s) in {len(streams)} stream(s) at level {level}; this "
                                 f"model codes {model.in_chans} in {len(model.latents)} at levels 0-{model.levels - 1}")
        s = model.y_stride  # y is this many times smaller than the (padded) image
        hw = (math.ceil(h / model.stride) * model.stride // s, math.ceil(w / model.stride) * model.stride // s)
        try:
            x_hat = model.decompress(dict(zip(model.latents, streams)), hw, level)
        except (ValueError, RuntimeError) as e:  # the CRC passed but the coder could not follow the stream
            raise BitstreamError(f"the stream does not decode with this model ({e})") from None
        return to_u8(x_hat[0, :, :h, :w]), level

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]):
        return RDMetric(self.cfg.codec.lmbdas)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ds, transform, batch_size: int, device: torch.device,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 progress: str | None = None, keep_outputs: bool = False, reduce: bool = False) -> dict:
        """Every image of the split at every rate level coded to a file and decoded from it, one at a
        time on the CPU in float32 (the coder is on the CPU; float32 is what ``visionsmith decompress``
        runs); ``outputs`` (with ``keep_outputs``, the official evaluation, which also scores MS-SSIM):
        per level, the decoded uint8 [C, H, W] images."""
        was_training = model.training
        model.eval()
        from ..ops.bitstream import model_hash
        net = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
        mhash = model_hash(net)  # sha256 of every weight: once, not twice per image and level
        metric = self.metric([])
        kept: list[list[Tensor]] = [[] for _ in range(net.levels)]
        jobs = [(lv, i) for lv in range(net.levels) for i in range(len(ds))]
        for lv, i in tqdm(jobs, desc=progress, unit="img", leave=False, disable=progress is None):
            u8 = ds.images[i]
            data = self.encode(net, u8, lv, mhash)
            dec, _ = self.decode(net, data, mhash)
            est = sum(-torch.log2(p.double()).sum() for p in net(self._pad(net, u8[None].float() / 255), lv)
                      ["likelihoods"].values())
            metric.update_image(lv, dec, u8, len(data), float(est), str(ds.paths[i]), ms_ssim=keep_outputs)
            if keep_outputs:
                kept[lv].append(dec)
        model.train(was_training)
        m = metric.compute()
        if keep_outputs:
            m["outputs"] = kept
        return m

    def eval_artifacts(self, run_dir, ds, outputs, m: dict) -> dict:
        """The classical codecs on the same images (``codec.baselines``): their curves, the bits each
        needs for every level's PSNR, and the BD-rates of this run's curve against them (two levels or
        more); for the official evaluation ``eval_samples.npz``, a crop of every test image at the level
        nearest 0.5 bpp: original, this codec, and JPEG at the nearest file size."""
        from ..metrics.compression import bd_rate, rate_at
        from ..ops import classical_codecs as cc
        if not len(ds):
            return {}
        images = [ds.images[i] for i in range(len(ds))]
        extra: dict = {}
        if self.cfg.codec.baselines:
            curves = {fmt: cc.sweep(images, fmt) for fmt in self.cfg.codec.baselines}
            extra["baselines"] = curves
            for row in m["levels"]:
                row["same_psnr_bpp"] = {fmt: rate_at(pts, row["psnr"]) for fmt, pts in curves.items()}
            if len(m["levels"]) >= 2:
                extra["bd_rate"] = {fmt: {k: bd_rate(pts, m["levels"], k) for k in ("psnr", "ms_ssim")}
                                    for fmt, pts in curves.items()}
        if run_dir is not None and outputs:
            import numpy as np
            from .enhancement import centre_box
            lv = min(range(len(m["levels"])), key=lambda k: abs(m["levels"][k]["bpp"] - 0.5))
            rows = [r for r in m["per_image"] if r["level"] == lv]
            crops = {"original": [], "output": [], "jpeg": []}
            jpeg_bpp = []
            for u8, dec, row in zip(images, outputs[lv], rows):
                _, nbytes, jpg = cc.quality_near(np.ascontiguousarray(u8.permute(1, 2, 0).numpy()), "jpeg", row["bytes"])
                jpeg_bpp.append(nbytes * 8 / (u8.shape[1] * u8.shape[2]))
                y0, y1, x0, x1 = centre_box(u8.shape[-2:], 160)
                for k, t in (("original", u8.numpy()), ("output", dec.numpy()), ("jpeg", jpg.transpose(2, 0, 1))):
                    crops[k].append(t[:, y0:y1, x0:x1])
            np.savez_compressed(run_dir / "eval_samples.npz", names=np.array([str(p) for p in ds.paths]),
                                level=np.array(lv), bpp=np.array([r["bpp"] for r in rows]),
                                jpeg_bpp=np.array(jpeg_bpp), **{k: np.stack(v) for k, v in crops.items()})
        return extra

    def summary(self, m: dict) -> str:
        parts = [f"level {r['level']} (lmbda {r['lmbda']:g}): {r['bpp']:.3f} bpp, PSNR {r['psnr']:.2f} dB, "
                 f"MS-SSIM {_num(r.get('ms_ssim'))}" for r in m.get("levels") or []]
        line = "; ".join(parts) + f"  (rd {m['rd']:.4f}; entropy model's estimate {m['bpp_estimated']:.3f} bpp)"
        for fmt, v in (m.get("bd_rate") or {}).items():
            line += f"; BD-rate vs {fmt} {_pct(v.get('psnr'))} (PSNR) {_pct(v.get('ms_ssim'))} (MS-SSIM)"
        if len(m.get("levels") or []) == 1:
            same = m["levels"][0].get("same_psnr_bpp") or {}
            line += "".join(f"; {fmt} needs {_num(b, 3)} bpp for the same PSNR" for fmt, b in same.items())
        return line

    def per_class_lines(self, m: dict) -> list[str]:
        return per_image_table(m.get("per_image") or [], "level  bpp    PSNR    MS-SSIM",
                               lambda r: f"{r['level']:5d}  {r['bpp']:.3f}  {r['psnr']:6.2f}  {_num(r['ms_ssim'])}")


class RDMetric:
    """Per-image bits, PSNR and MS-SSIM at each rate level, averaged over the images at ``compute`` (as
    codec papers average over Kodak); the run-level numbers are the means over the levels."""

    def __init__(self, lmbdas: list[float]):
        self.lmbdas, self.rows = list(lmbdas), []

    def update_image(self, level: int, decoded: Tensor, original: Tensor, nbytes: int, est_bits: float,
                     name: str = "", ms_ssim: bool = True) -> None:
        """``ms_ssim=False``: skip MS-SSIM (0.3 s a photo here; validation does not need it)."""
        from ..metrics.compression import image_scores
        from ..metrics.enhancement import psnr
        px = original.shape[-2] * original.shape[-1]
        mse = (decoded.double() - original.double()).div(255).pow(2).mean().item()
        scores = image_scores(decoded, original) if ms_ssim else {"psnr": psnr(decoded, original), "ms_ssim": None}
        self.rows.append({"image": name, "level": level, "bytes": nbytes, "bpp": nbytes * 8 / px,
                          "bpp_estimated": est_bits / px, "mse": mse, **scores})

    def update(self, outputs, batch) -> None:
        raise NotImplementedError("compression scores whole coded images: use update_image")

    def reduce(self) -> None:  # evaluation runs on one process
        pass

    def compute(self) -> dict:
        levels = []
        for lv, lam in enumerate(self.lmbdas):
            rows = [r for r in self.rows if r["level"] == lv]
            if not rows:
                continue
            mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
            ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
            levels.append({"level": lv, "lmbda": lam, "rd": lam * 255 ** 2 * mean("mse") + mean("bpp"), "bpp": mean("bpp"),
                           "psnr": mean("psnr"), "ms_ssim": sum(ms) / len(ms) if ms else None,
                           "bpp_estimated": mean("bpp_estimated")})
        if not levels:
            return {"rd": float("nan"), "bpp": float("nan"), "psnr": float("nan"), "ms_ssim": None,
                    "bpp_estimated": float("nan"), "levels": [], "per_image": []}
        avg = lambda k: sum(r[k] for r in levels) / len(levels)  # noqa: E731
        ms = [r["ms_ssim"] for r in levels if r["ms_ssim"] is not None]
        return {"rd": avg("rd"), "bpp": avg("bpp"), "psnr": avg("psnr"), "ms_ssim": sum(ms) / len(ms) if ms else None,
                "bpp_estimated": avg("bpp_estimated"), "levels": levels, "per_image": self.rows,
                "n": sum(r["level"] == levels[0]["level"] for r in self.rows)}


def _num(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).float().cpu().eval()


def check_config(cfg) -> None:
    """A compression run needs a codec and the rate-distortion method (the others score other outputs)."""
    if cfg.task != "compression":
        return  # method=rate_distortion on another task: the method registry refuses it
    from ..models.codecs import codec_names
    if cfg.model.name not in codec_names():
        raise ConfigError(f"model.name={cfg.model.name} is not a learned codec; task compression builds "
                          f"{', '.join(codec_names())}")
    if cfg.method != "rate_distortion":
        raise ConfigError(f"task compression is trained with method=rate_distortion, not {cfg.method}")


add_check(check_config)
