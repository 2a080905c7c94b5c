"""What a task's predictions look like outside the model: files, JSON, HTTP answers, export checks.

``visionsmith predict``, ``visionsmith serve`` and ``visionsmith export`` run every task the same
way (decode a file, cut it into model-size windows, run the model, hand the raw outputs back); the
one part that differs per task is here, in one small class per task, registered by task name
(the only place outside ``tasks/`` that names a task):

    out = output_for(task.name, classes)
    windows, ctx = out.prepare(pil_image, decode_size, grayscale)  # uint8 [n, C, s, s] + what to undo
    pred, extra = out.predict(path, logits_of_those_windows, ctx)  # Prediction / MaskPrediction (+ class map)
    out.writer(out_dir, source).write(pred, pil_image, extra)      # predict's files (segmentation)
    answer = out.answer(logits, ctx, filename, k)                  # one image of a REST response
    out.compare(pixel_model, onnx_model, heldout, atol, task, {})  # the export's parity check

Classification: one window per image (``image_to_uint8``: shorter side scaled, centre crop), top-k
softmax classes.  Segmentation: the image is scaled so its shorter side is the training decode
size (as training data was) and covered by square windows of that size along its longer side
(overlaps averaged on the logits), so the whole image is predicted at the scale the model learned;
the class map is then resized back to the input's own size with nearest neighbour.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import UserError

BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")  # never coloured in overlays
OVERLAY_ALPHA = 0.5
MAX_WINDOWS = 8  # a longer side beyond 8x the shorter is squeezed to 8 windows (panoramas, strips)


# -- the per-task registry -------------------------------------------------------------------------

_OUTPUTS: dict[str, type[TaskOutput]] = {}


def register_output(cls: type[TaskOutput]) -> type[TaskOutput]:
    """Class decorator: the outputs of the task named ``cls.task``."""
    _OUTPUTS[cls.task] = cls
    return cls


def output_tasks() -> list[str]:
    """The tasks that predict, export and serve can handle."""
    return sorted(_OUTPUTS)


def output_for(task: str, classes: list[str], settings: dict | None = None) -> TaskOutput:
    """The output handler of ``task`` for a model with these ``classes``; ``settings``: the run's
    ``Task.postprocess_settings()`` (detection: score threshold, NMS IoU...), as the export records them."""
    if task not in _OUTPUTS:
        raise UserError(f"a {task!r} model cannot be run by predict, export or serve yet; "
                        f"they handle {', '.join(output_tasks())}")
    return _OUTPUTS[task](classes, settings)


class TaskOutput:
    """The shared shape of a task's outputs; see the module docstring."""

    task: ClassVar[str]
    keeps_image: ClassVar[bool] = False  # predict keeps the decoded image until its answer (overlays)
    answer_off_loop: ClassVar[bool] = False  # serve computes ``answer`` in a thread (it is real work)
    int8_max_drop: ClassVar[float] = 1.0  # headline points INT8 may lose (export's default --max-drop)
    onnx_output: ClassVar[str] = ""  # what the exported graph's ``logits`` output is, in words
    batched: ClassVar[bool] = True  # uploads become fixed-size windows that serve batches across requests
    exportable: ClassVar[bool] = True  # ``visionsmith export`` writes an ONNX graph of it
    serves_onnx: ClassVar[bool] = True  # ``visionsmith serve`` runs that graph (else the run's PyTorch model)
    free_size: ClassVar[bool] = False  # the graph takes any height and width (else the training size)

    def __init__(self, classes: list[str], settings: dict | None = None):
        self.classes = list(classes)
        self.settings = dict(settings or {})  # Task.postprocess_settings() of the run

    # predict and serve
    def prepare(self, img: Image.Image, size: int, grayscale: bool):
        """A decoded image -> (uint8 windows ``[n, C, size, size]`` for the model, the context that
        ``predict``/``answer`` need to turn the windows' logits back into one image's answer)."""
        raise NotImplementedError

    def predict(self, path: str, logits: torch.Tensor, ctx, topk: int = 5):
        """The logits of one image's windows -> (its prediction, what the writer needs besides: the class
        map for segmentation, None for classification)."""
        raise NotImplementedError

    def answer(self, logits: np.ndarray, ctx, filename: str, k: int) -> dict:
        """One image's entry of the REST response from its windows' logits (numpy)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Extra fields of ``GET /v1/models`` and of the export metadata."""
        return {}

    def legend(self) -> dict:
        """What predict's per-image JSON and ``predictions.json`` say about the classes."""
        return {"classes": self.classes}

    def writer(self, out: str | Path | None, source: str) -> Writer:
        """Where predict puts its files for ``out`` (raises ``UserError`` when this task needs a folder)."""
        return Writer()

    # export
    def compare(self, pixel_model, onnx_model, held, atol: float, task, cache: dict) -> dict:
        raise NotImplementedError

    def check_fp32(self, res: dict, atol: float) -> None:
        raise NotImplementedError

    def check_int8(self, res: dict, max_drop: float, mode: str) -> None:
        raise NotImplementedError

    def bounds(self, atol: float, max_drop: float) -> dict:
        raise NotImplementedError

    def parity_table(self, record: dict) -> str | None:
        """The CLI's parity table for an export record (None: the CLI's own classification table)."""
        return None


class Writer:
    """Where predict's per-image files go (nothing by default); ``finish`` after the last image."""

    out: Path | None = None

    def write(self, pred, img: Image.Image | None, extra) -> None:
        pass

    def finish(self, result) -> None:
        pass


class FolderWriter(Writer):
    """A writer of per-image files in the folder ``out`` (made here): names from the input file's stem,
    made unique (``a/x.png`` and ``b/x.png``, or ``x.png`` and ``x.jpg``: ``x``, ``x-2``, ...); at the end
    ``predictions.json`` with every image, every skipped file and the output's ``legend()``."""

    def __init__(self, out: Path, output: TaskOutput, source: str):
        self.out, self.output, self.source = out, output, source
        self.used: set[str] = set()
        out.mkdir(parents=True, exist_ok=True)

    def finish(self, result) -> None:
        import json
        body = {"model": self.source, "task": self.output.task, **self.output.legend(),
                "predictions": [p.as_json() for p in result.predictions],
                "bad": [{"path": p, "reason": r} for p, r in result.bad]}
        write_atomic(self.out / "predictions.json", json.dumps(body, indent=2).encode())

    def _name(self, path: str) -> str:
        stem = Path(path).stem or "image"
        name, i = stem, 1
        while name.lower() in self.used:
            i += 1
            name = f"{stem}-{i}"
        self.used.add(name.lower())
        return name


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` under a temporary name, then renamed: a file that is there is whole."""
    import os
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
