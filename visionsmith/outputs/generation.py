"""Generation: a model that draws images rather than answering uploads.  ``visionsmith serve`` answers
``POST /v1/models/NAME:generate`` (``serve/backends.GeneratorBackend``); predict and export refuse
it with a line that says what to use instead."""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .base import TaskOutput, register_output


def contact_sheet(u8, cols: int | None = None, pad: int = 0) -> np.ndarray:
    """uint8 images ``[n, C, S, S]`` (tensor or array) -> one uint8 ``[C, H, W]`` sheet of ``cols`` columns
    (default ceil(sqrt(n))) with ``pad`` white pixels between and around them: `sample`'s grid.png and the
    report's pictures."""
    u8 = np.asarray(u8)
    n, c, s, _ = u8.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((c, rows * (s + pad) + pad, cols * (s + pad) + pad), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (s + pad), pad + k * (s + pad)
        out[:, y:y + s, x:x + s] = u8[i]
    return out


@register_output
class GeneratedOutput(TaskOutput):
    task = "generation"
    batched = False
    exportable = False  # sampling is a loop around the network (diffusion: 50+ calls): served from the run
    onnx_output = "not exported: sampling loops over the network"

    def describe(self) -> dict:
        return {"output": "generated images", **self.settings}

    def prepare(self, img, size: int, grayscale: bool):
        raise UserError("a generation model draws images and reads none: POST /v1/models/NAME:generate, or "
                        "`visionsmith sample RUN --out DIR`")

    def writer(self, out, source: str):
        raise UserError(f"{source} draws images: use `visionsmith sample {source} --n 16 --out DIR`")
