"""Parity of an exported model with the PyTorch model it came from, on held-out images.

fp32 must match: max |logit difference| <= ``atol`` and no top-1 flip except on near-ties (images
whose top-2 PyTorch logits are within ``atol``: there float rounding may pick either class).
INT8 is allowed to differ: its bound is the accuracy drop in points, with top-1 agreement reported.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

FP32_ATOL = 1e-3       # on logits of size ~1-10; float32 reordering gives ~1e-6
INT8_MAX_DROP = 1.0    # accuracy points (percent) INT8 may lose against PyTorch fp32


class ExportError(UserError):
    """An export that cannot be written as asked (bad opset, exporter failure, bad run)."""


class ParityError(ExportError):
    """The exported model does not reproduce the PyTorch model within the bound; nothing was written."""


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None, atol: float = FP32_ATOL) -> dict:
    """Logits ``ref`` (PyTorch) and ``got`` (ONNX Runtime), both ``[N, K]``, ``labels`` ``[N]`` or None.

    Returns ``n``, ``max_abs_diff``, ``mean_abs_diff``, ``top1_agreement``, ``flips`` (top-1
    disagreements), ``flips_beyond_tie`` (those where PyTorch's top-2 margin exceeds ``atol``),
    and with labels ``acc_ref``, ``acc``, ``acc_drop_points`` (100 * (acc_ref - acc)).
    """
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ExportError(f"exported model gives logits of shape {got.shape}, PyTorch gives {ref.shape}")
    diff = np.abs(ref - got)
    a, b = ref.argmax(1), got.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.concatenate([ref, ref], 1)
    margin = top2[:, 1] - top2[:, 0]
    flips = a != b
    out = {"n": int(len(ref)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
           "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
           "top1_agreement": float(1 - flips.mean()) if len(ref) else 1.0,
           "flips": int(flips.sum()), "flips_beyond_tie": int((flips & (margin > atol)).sum())}
    if labels is not None:
        labels = np.asarray(labels)
        out["acc_ref"] = float((a == labels).mean())
        out["acc"] = float((b == labels).mean())
        out["acc_drop_points"] = round(100 * (out["acc_ref"] - out["acc"]), 4)
    return out


@torch.no_grad()
def torch_logits(model: torch.nn.Module, pixels: torch.Tensor, batch: int = 256) -> np.ndarray:
    """``model`` (a ``PixelModel``) on pixels ``[N, C, S, S]`` -> float32 logits ``[N, K]``."""
    return torch.cat([model(pixels[i:i + batch]).float() for i in range(0, len(pixels), batch)]).numpy()


def ort_logits(clf, pixels: torch.Tensor, batch: int = 256) -> np.ndarray:
    """An ``OnnxClassifier`` on pixels ``[N, C, S, S]`` -> float32 logits ``[N, K]``."""
    x = pixels.numpy()
    return np.concatenate([clf.predict_pixels(x[i:i + batch]) for i in range(0, len(x), batch)])


def check_fp32(res: dict, atol: float = FP32_ATOL) -> None:
    """Raise ``ParityError`` unless fp32 ONNX reproduces PyTorch (see the module docstring)."""
    if res["max_abs_diff"] > atol or res["flips_beyond_tie"]:
        raise ParityError(
            f"fp32 ONNX does not match PyTorch on {res['n']} held-out images: max |logit difference| "
            f"{res['max_abs_diff']:.2e} (bound {atol:.0e}), top-1 agreement {100 * res['top1_agreement']:.2f}% "
            f"({res['flips_beyond_tie']} flips that are not near-ties); nothing was written. This is an exporter "
            "bug for this model: report it with the run's config.yaml (try another --opset)")


def check_int8(res: dict, max_drop: float = INT8_MAX_DROP, mode: str = "static") -> None:
    """Raise ``ParityError`` when INT8 loses more than ``max_drop`` accuracy points."""
    if "acc_drop_points" in res and res["acc_drop_points"] > max_drop:
        hint = ("Try more calibration images (--calib)" if mode == "static" else
                "Dynamic INT8 quantizes activations batch by batch and loses accuracy on CNNs: use --int8 static")
        raise ParityError(
            f"{mode} INT8 model loses {res['acc_drop_points']:.2f} accuracy points on {res['n']} held-out images "
            f"({100 * res['acc_ref']:.2f}% -> {100 * res['acc']:.2f}%, bound {max_drop:.2f}, top-1 agreement "
            f"{100 * res['top1_agreement']:.2f}%); nothing was written. {hint}, or raise the bound with --max-drop")
