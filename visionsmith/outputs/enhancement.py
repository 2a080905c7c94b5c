"""Enhancement outputs: an image in, an image out (``visionsmith serve``'s answer; files come from
``visionsmith enhance``, not ``predict``).

The model's output for one upload is the restored image float ``[1, C, sH, sW]`` (the whole image,
run tile by tile on the server's inference thread: ``serve.backends.ImageBackend``); the answer is
that image as an 8-bit PNG in base64 with its size, and what decoding changed about the upload.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..errors import UserError
from .base import TaskOutput, register_output


def png_bytes(u8: np.ndarray) -> bytes:
    """uint8 ``[C, H, W]`` (C = 1 or 3) -> PNG bytes."""
    arr = u8[0] if u8.shape[0] == 1 else np.transpose(u8, (1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


@register_output
class ImageOutput(TaskOutput):
    task = "enhancement"
    batched = False  # whole images of any size: not stacked with other requests into one model call
    answer_off_loop = True  # PNG encoding of a photo is real work
    serves_onnx = False  # serve runs the checkpoint tile by tile (ImageBackend); the export is for your runtime
    free_size = True  # fully convolutional: the graph takes any [N, C, H, W]
    int8_max_drop = 0.5  # dB of PSNR INT8 may lose against PyTorch fp32 (export's default --max-drop)
    onnx_output = "pixels float32 [N, C, sH, sW]: the restored image in [0, 1] (unclamped), s = the SR scale"

    def describe(self) -> dict:
        return {"output": "image", **{k: v for k, v in self.settings.items() if k in ("degradation", "scale", "sigma")}}

    def answer(self, outputs, ctx, filename: str, k: int) -> dict:
        """``outputs``: the restored float image(s) of this upload (``[1, C, sH, sW]``, or a one-item list)."""
        y = np.asarray(outputs[0])
        y = y[0] if y.ndim == 4 else y  # [C, sH, sW] float in [0, 1] (unclamped)
        u8 = (np.clip(y, 0, 1) * 255).round().astype(np.uint8)
        return {"filename": filename, "image": {"png_base64": base64.b64encode(png_bytes(u8)).decode("ascii"),
                                                "width": int(u8.shape[2]), "height": int(u8.shape[1])},
                "size_in": list(ctx["size"]), "notes": ctx.get("notes", [])}

    def writer(self, out, source: str):
        raise UserError(f"{source} restores images: use `visionsmith enhance {source} IMAGES --out DIR` "
                        "(predict answers classes, masks and boxes)")

    # export: the restored pixels of PyTorch and ONNX Runtime side by side, and PSNR against the clean crop
    def compare(self, pixel_model, onnx_model, held, atol, task, cache) -> dict:
        """Returns ``n``, ``pixels``, ``max_abs_diff``/``mean_abs_diff`` (restored [0, 1] pixel values),
        ``psnr_ref`` (PyTorch) and ``psnr`` (ONNX) against the clean targets on 8-bit outputs, the drop
        ``psnr_drop_db`` and ``metric``."""
        import torch

        from ..export.parity import ExportError
        from ..metrics.enhancement import psnr, to_u8
        max_d, sum_d, count, ref_db, got_db = 0.0, 0.0, 0, [], []
        for i in range(len(held.pixels)):
            x, clean = held.pixels[i:i + 1], held.labels[i:i + 1]
            with torch.no_grad():
                ref = pixel_model(x).float()
            got = torch.from_numpy(np.asarray(onnx_model.predict_pixels(x.numpy()), dtype=np.float32))
            if ref.shape != got.shape:
                raise ExportError(f"exported model gives images of shape {tuple(got.shape)}, PyTorch gives {tuple(ref.shape)}")
            d = (ref - got).abs()
            max_d, sum_d, count = max(max_d, float(d.max())), sum_d + float(d.double().sum()), count + d.numel()
            target = to_u8(clean[0])  # scored on 8-bit outputs, as `visionsmith enhance` writes them
            ref_db.append(psnr(to_u8(ref[0]), target, task.shave))
            got_db.append(psnr(to_u8(got[0]), target, task.shave))
        r, g = float(np.mean(ref_db)), float(np.mean(got_db))
        return {"n": len(held.pixels), "pixels": int(held.labels[0, 0].numel()) * len(held.pixels),
                "max_abs_diff": max_d, "mean_abs_diff": sum_d / max(count, 1), "psnr_ref": r, "psnr": g,
                "psnr_drop_db": round(r - g, 4), "metric": "psnr"}

    def check_fp32(self, res: dict, atol: float) -> None:
        from ..export.parity import ParityError
        if res["max_abs_diff"] > atol:
            raise ParityError(f"fp32 ONNX does not match PyTorch on {res['n']} held-out crops: max |pixel difference| "
                              f"{res['max_abs_diff']:.2e} (bound {atol:.0e}); nothing was written. This is an exporter "
                              "bug for this model: report it with the run's config.yaml (try another --opset)")

    def check_int8(self, res: dict, max_drop: float, mode: str) -> None:
        from ..export.parity import ParityError
        if res["psnr_drop_db"] > max_drop:
            hint = "Try more calibration images (--calib)" if mode == "static" else "Try --int8 static"
            raise ParityError(f"{mode} INT8 model loses {res['psnr_drop_db']:.2f} dB of PSNR on {res['n']} held-out "
                              f"crops ({res['psnr_ref']:.2f} -> {res['psnr']:.2f} dB, bound {max_drop:.2f}); nothing was "
                              f"written. {hint}, or raise the bound with --max-drop")

    def bounds(self, atol: float, max_drop: float) -> dict:
        return {"fp32_max_abs_diff": atol, "int8_max_drop_db": max_drop}

    def parity_table(self, record: dict) -> str:
        par, b = record["parity"], record["bounds"]
        q = record.get("quantization")
        kind = f"INT8 {q['mode']}" if q else "fp32"
        lines = [f"ONNX opset {record['opset']}, {kind}, output restored pixels [N, C, sH, sW] (any H, W); checked "
                 f"against PyTorch on {par['images']}:",
                 f"  {'model':<14}{'PSNR (dB)':>11}{'max |dpixel|':>14}{'mean |dpixel|':>15}",
                 f"  {'pytorch fp32':<14}{par['fp32']['psnr_ref']:>11.2f}{'-':>14}{'-':>15}"]
        for k in ("fp32", "int8"):
            if k in par:
                r = par[k]
                lines.append(f"  {'onnx ' + k:<14}{r['psnr']:>11.2f}{r['max_abs_diff']:>14.2e}{r['mean_abs_diff']:>15.2e}")
        lines.append(f"  fp32 bound: max |dpixel| <= {b['fp32_max_abs_diff']:.0e}: passed")
        if "int8" in par:
            lines.append(f"  INT8 PSNR drop {par['int8']['psnr_drop_db']:+.2f} dB (bound {b['int8_max_drop_db']:.2f}): passed")
        return "\n".join(lines)

