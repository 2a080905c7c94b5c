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
    exportable = False  # not yet: serve the run folder, or `visionsmith enhance`
    onnx_output = "pixels float32 [N, C, sH, sW]: the restored image"

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

