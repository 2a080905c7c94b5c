"""Parity of an exported model with the PyTorch model it came from, on held-out images.

fp32 must match: max |logit difference| <= ``atol`` and no top-1 flip except on near-ties (images
whose top-2 PyTorch logits are within ``atol``: there float rounding may pick either class).
INT8 is allowed to differ: its bound is the accuracy drop in points, with top-1 agreement reported.

Dense outputs (segmentation logits ``[N, K, S, S]``) are compared per pixel, batch by batch (a split's
logits need not fit in memory): fp32 needs max |logit difference| <= ``atol`` and per-pixel argmax
agreement >= ``MIN_PIXEL_AGREEMENT``; INT8's bound is the drop of the task's headline metric (mIoU)
in points, measured with the task's own metric on the held-out images and their masks.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

FP32_ATOL = 1e-3       # on logits of size ~1-10; float32 reordering gives ~1e-6
INT8_MAX_DROP = 1.0    # accuracy points (percent) INT8 may lose against PyTorch fp32
MIN_PIXEL_AGREEMENT = 0.999  # dense fp32: share of pixels whose argmax class ONNX and PyTorch agree on


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
    """``model`` (a visionsmith model: it takes [0, 1] pixels) on pixels ``[N, C, S, S]`` -> float32
    logits ``[N, K]``."""
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


@torch.no_grad()
def compare_dense(model: torch.nn.Module, clf, pixels: torch.Tensor, targets: torch.Tensor | None, make_metric,
                  target_key: str, headline: str, atol: float = FP32_ATOL, batch: int = 32) -> dict:
    """PyTorch ``model`` (taking [0, 1] pixels) vs an ``OnnxModel`` ``clf`` on pixels ``[N, C, S, S]`` whose
    outputs are dense logits ``[N, K, S, S]``, streamed ``batch`` images at a time.

    ``targets``: int64 ``[N, S, S]`` (``IGNORE`` for void) or None; ``make_metric()``: a fresh metric
    accumulator of the task (``update(logits, {target_key: ...})``, ``compute()[headline]``).
    Returns ``n`` (images), ``pixels``, ``max_abs_diff``, ``mean_abs_diff``, ``pixel_agreement``
    (share of pixels with the same argmax class), ``flips``, ``flips_beyond_tie`` (flipped pixels whose
    PyTorch top-2 margin exceeds ``atol``), and with targets ``HEADLINE_ref``, ``HEADLINE`` and
    ``HEADLINE_drop_points`` (100 * (ref - onnx), e.g. ``miou_drop_points``).
    """
    n = len(pixels)
    max_d, sum_d, count, flips, beyond = 0.0, 0.0, 0, 0, 0
    m_ref = m_got = None
    if targets is not None:
        m_ref, m_got = make_metric(), make_metric()
    for i in range(0, n, batch):
        x = pixels[i:i + batch]
        ref = model(x).float()
        got = torch.from_numpy(np.asarray(clf.predict_pixels(x.numpy()), dtype=np.float32))
        if ref.shape != got.shape:
            raise ExportError(f"exported model gives logits of shape {tuple(got.shape)}, PyTorch gives {tuple(ref.shape)}")
        d = (ref - got).abs()
        max_d = max(max_d, float(d.max())) if d.numel() else max_d
        sum_d += float(d.double().sum())
        count += d.numel()
        a, b = ref.argmax(1), got.argmax(1)
        flip = a != b
        if ref.shape[1] > 1:
            top2 = ref.topk(2, dim=1).values
            margin = top2[:, 0] - top2[:, 1]
        else:
            margin = torch.full_like(a, float("inf"), dtype=torch.float32)
        flips += int(flip.sum())
        beyond += int((flip & (margin > atol)).sum())
        if targets is not None:
            t = {target_key: targets[i:i + batch]}
            m_ref.update(ref, t)
            m_got.update(got, t)
    px = n * (int(pixels.shape[-1]) * int(pixels.shape[-2]))
    out = {"n": int(n), "pixels": int(px), "max_abs_diff": max_d, "mean_abs_diff": sum_d / count if count else 0.0,
           "pixel_agreement": 1 - flips / px if px else 1.0, "flips": flips, "flips_beyond_tie": beyond}
    if targets is not None:
        r, g = float(m_ref.compute()[headline]), float(m_got.compute()[headline])
        out.update({f"{headline}_ref": r, headline: g, f"{headline}_drop_points": round(100 * (r - g), 4),
                    "metric": headline})
    return out


def check_fp32_dense(res: dict, atol: float = FP32_ATOL, min_agreement: float = MIN_PIXEL_AGREEMENT) -> None:
    """Raise ``ParityError`` unless fp32 ONNX reproduces PyTorch's dense logits (module docstring)."""
    if res["max_abs_diff"] > atol or res["pixel_agreement"] < min_agreement:
        raise ParityError(
            f"fp32 ONNX does not match PyTorch on {res['n']} held-out images ({res['pixels']} pixels): max |logit "
            f"difference| {res['max_abs_diff']:.2e} (bound {atol:.0e}), per-pixel argmax agreement "
            f"{100 * res['pixel_agreement']:.3f}% (bound {100 * min_agreement:.1f}%); nothing was written. This is an "
            "exporter bug for this model: report it with the run's config.yaml (try another --opset)")


def check_int8_dense(res: dict, max_drop: float, mode: str = "static") -> None:
    """Raise ``ParityError`` when INT8 loses more than ``max_drop`` points of the task's headline metric."""
    h = res.get("metric")
    if h and res[f"{h}_drop_points"] > max_drop:
        hint = ("Try more calibration images (--calib)" if mode == "static" else
                "Dynamic INT8 quantizes activations batch by batch and loses accuracy on CNNs: use --int8 static")
        raise ParityError(
            f"{mode} INT8 model loses {res[f'{h}_drop_points']:.2f} {h} points on {res['n']} held-out images "
            f"({100 * res[f'{h}_ref']:.2f} -> {100 * res[h]:.2f}, bound {max_drop:.2f}, per-pixel agreement "
            f"{100 * res['pixel_agreement']:.2f}%); nothing was written. {hint}, or raise the bound with --max-drop")


def dense_table(rec: dict) -> str:
    """A dense export's parity check (``export.json`` record) as a small table for the CLI."""
    par, b = rec["parity"], rec["bounds"]
    q = rec.get("quantization")
    kind = "fp32"
    if q:
        kind = f"INT8 {q['mode']}" + (f" {q['format']}, per-channel={q['per_channel']}, reduce_range="
                                      f"{q['reduce_range']}" if q["mode"] == "static" else "")
    h = par["fp32"].get("metric")
    name = {"miou": "mIoU"}.get(h, h or "metric")
    lines = [(f"ONNX opset {rec['opset']}, {kind}, output per-pixel logits [N, K, S, S]; checked against PyTorch "
              f"on {par['images']}:"),
             f"  {'model':<14}{name:>9}{'pixel agree':>13}{'max |dlogit|':>14}{'mean |dlogit|':>15}"]
    if h:
        lines.append(f"  {'pytorch fp32':<14}{par['fp32'][h + '_ref']:>9.4f}{'-':>13}{'-':>14}{'-':>15}")
    for kind_ in ("fp32", "int8"):
        if kind_ in par:
            r = par[kind_]
            v = f"{r[h]:.4f}" if h else "-"
            lines.append(f"  {'onnx ' + kind_:<14}{v:>9}{100 * r['pixel_agreement']:>12.2f}%"
                         f"{r['max_abs_diff']:>14.2e}{r['mean_abs_diff']:>15.2e}")
    lines.append(f"  fp32 bound: max |dlogit| <= {b['fp32_max_abs_diff']:.0e}, per-pixel argmax agreement >= "
                 f"{100 * b['fp32_min_pixel_agreement']:.1f}% ({100 * par['fp32']['pixel_agreement']:.3f}%): passed")
    if "int8" in par and h:
        lines.append(f"  INT8 {name} drop {par['int8'][h + '_drop_points']:+.2f} points "
                     f"(bound {b['int8_max_drop_points']:.2f}): passed")
    return "\n".join(lines)
