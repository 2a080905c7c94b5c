"""Classification outputs: one window per image, top-k softmax classes; accuracy parity on export."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import TaskOutput, register_output


# -- classification --------------------------------------------------------------------------------

@dataclass
class Prediction:
    """One image's top-k classes."""
    path: str
    topk: list[tuple[str, float]]  # (class, probability), best first

    def text(self) -> str:
        return "  ".join(f"{c} {q:.3f}" for c, q in self.topk)

    def as_json(self) -> dict:
        return {"path": self.path, "topk": [{"class": c, "prob": q} for c, q in self.topk]}


@register_output
class ClassOutput(TaskOutput):
    task = "classification"
    onnx_output = "logits float32 [N, K]: class scores (softmax gives the probabilities)"

    def prepare(self, img, size, grayscale):
        from ..data import image_to_uint8
        return image_to_uint8(img, size, grayscale).unsqueeze(0), None

    def predict(self, path, logits, ctx, topk=5):
        p, idx = logits.float().softmax(-1).topk(min(topk, len(self.classes)), dim=-1)
        return Prediction(str(path), [(self.classes[j], q) for j, q in zip(idx[0].tolist(), p[0].tolist())]), None

    def answer(self, logits, ctx, filename, k):
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        row = p[0]
        order = np.argsort(-row, kind="stable")[:k]
        return {"filename": filename, "topk": [{"class": self.classes[j], "index": int(j), "prob": round(float(row[j]), 6)}
                                               for j in order]}

    def compare(self, pixel_model, onnx_model, held, atol, task, cache):
        from ..export.parity import compare, ort_logits, torch_logits
        if "ref" not in cache:  # PyTorch's logits once, for the fp32 and the INT8 comparison
            cache["ref"] = torch_logits(pixel_model, held.pixels)
        labels = held.labels.numpy() if held.labels is not None else None
        return compare(cache["ref"], ort_logits(onnx_model, held.pixels), labels, atol)

    def check_fp32(self, res, atol):
        from ..export.parity import check_fp32
        check_fp32(res, atol)

    def check_int8(self, res, max_drop, mode):
        from ..export.parity import check_int8
        check_int8(res, max_drop, mode)

    def bounds(self, atol, max_drop):
        return {"fp32_max_abs_diff": atol, "int8_max_acc_drop_points": max_drop}


