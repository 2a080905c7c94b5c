"""Generation: a model that draws images rather than answering uploads.  ``visionsmith serve`` answers
``POST /v1/models/NAME:generate`` (``serve/backends.GeneratorBackend``); predict and export refuse
it with a line that says what to use instead."""
from __future__ import annotations

from ..errors import UserError
from .base import TaskOutput, register_output


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
