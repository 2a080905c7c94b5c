"""Detection outputs: windows at the training scale, boxes mapped back to the input image, overlay
PNGs with labelled boxes, JSON, REST answers, and export parity on the final boxes.

The graph (and the eager model) returns raw per-location outputs ``[n, N, 5 + K]`` with the boxes
already decoded; the score, threshold and class-aware NMS run here (``tasks.detection.decode``),
with the run's own settings (``postprocess``, carried in the export's metadata), so eager, ONNX fp32
and ONNX INT8 give detections through the same code.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError
from .base import FolderWriter, TaskOutput, Writer, register_output, write_atomic
from .segmentation import Tiles, _font, hex_colour, palette, tile

DRAW_MIN_SCORE = 0.3  # overlays draw detections scoring at least this (the JSON lists them all)


@dataclass
class BoxPrediction:
    """One image's detections, best first: ``boxes`` (x1, y1, x2, y2 in the input image's pixels),
    ``labels`` (class names), ``scores``; ``files`` written by predict (``overlay``, ``json``)."""
    path: str
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[str]
    scores: list[float]
    files: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        shown = [(c, s) for c, s in zip(self.labels, self.scores) if s >= DRAW_MIN_SCORE]
        cells = "  ".join(f"{c} {s:.2f}" for c, s in shown[:6]) or f"no object scored >= {DRAW_MIN_SCORE}"
        more = f"  (+{len(shown) - 6} more)" if len(shown) > 6 else ""
        where = f"  -> {self.files['overlay']}" if "overlay" in self.files else ""
        return f"{len(shown)} objects: {cells}{more}{where}"

    def as_json(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height,
                "detections": [{"box": [round(v, 2) for v in b], "class": c, "score": round(s, 5)}
                               for b, c, s in zip(self.boxes, self.labels, self.scores)],
                "files": dict(self.files)}


def boxes_to_image(outputs: torch.Tensor, t: Tiles, settings: dict) -> dict:
    """The raw outputs of one image's windows ``[n, N, 5 + K]`` -> its detections in the input image's
    pixels: each window decoded, shifted by its offset, all windows merged by class-aware NMS (an
    object in two overlapping windows is found once), scaled back to ``width`` x ``height``."""
    from ..ops.boxes import batched_nms, nms
    from ..tasks.detection import decode
    s = t.size
    dets = decode(outputs, (s, s), **settings)
    shift = torch.tensor([[x, y, x, y] for x, y in t.offsets], dtype=torch.float32)  # [n, 4]
    boxes = torch.cat([d["boxes"] + shift[i] for i, d in enumerate(dets)]) if dets else torch.zeros(0, 4)
    scores = torch.cat([d["scores"] for d in dets]) if dets else torch.zeros(0)
    labels = torch.cat([d["labels"] for d in dets]) if dets else torch.zeros(0, dtype=torch.long)
    if len(t.offsets) > 1:
        iou = settings.get("nms_iou", 0.6)
        keep = nms(boxes, scores, iou) if settings.get("class_agnostic") else batched_nms(boxes, scores, labels, iou)
        keep = keep[:settings.get("max_detections", 100)]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    scale = torch.tensor([t.width / t.rw, t.height / t.rh] * 2)
    return {"boxes": boxes * scale, "scores": scores, "labels": labels}


def draw_boxes(img: Image.Image, pred: BoxPrediction, colours: dict[str, tuple]) -> Image.Image:
    """The image with each detection scoring >= ``DRAW_MIN_SCORE`` as a coloured box and a
    "class score" tag above it (inside the image when the box touches the top)."""
    im = img.convert("RGB").copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    width = max(1, round(min(w, h) / 150))
    font = _font(int(min(32, max(10, min(w, h) / 25))))
    for box, c, s in reversed(list(zip(pred.boxes, pred.labels, pred.scores))):  # best drawn last, on top
        if s < DRAW_MIN_SCORE:
            continue
        col = colours[c]
        d.rectangle(box, outline=col, width=width)
        tag = f"{c} {s:.2f}"
        tw, th = d.textlength(tag, font=font), font.size if hasattr(font, "size") else 11
        y = box[1] - th - 2 if box[1] - th - 2 >= 0 else box[1]
        d.rectangle((box[0], y, box[0] + tw + 4, y + th + 2), fill=col)
        d.text((box[0] + 2, y), tag, fill=(0, 0, 0) if sum(col) > 380 else (255, 255, 255), font=font)
    return im


class BoxWriter(FolderWriter):
    """predict's files for a detection model in ``out``: per image ``NAME.overlay.png`` and
    ``NAME.json``; at the end ``predictions.json`` with every image and every skipped file."""


    def write(self, pred, img, extra):
        name = self._name(pred.path)
        files = {"overlay": self.out / f"{name}.overlay.png", "json": self.out / f"{name}.json"}
        pred.files = {k: str(v) for k, v in files.items()}
        buf = io.BytesIO()
        draw_boxes(img, pred, self.output.colours).save(buf, format="PNG")
        write_atomic(files["overlay"], buf.getvalue())
        write_atomic(files["json"], json.dumps({**pred.as_json(), "model": self.source}, indent=2).encode())


@register_output
class BoxOutput(TaskOutput):
    task = "detection"
    keeps_image = True
    answer_off_loop = True
    int8_max_drop = 1.0  # mAP@[.5:.95] points
    onnx_output = ("logits float32 [N, L, 5 + K]: per location the decoded box (x1, y1, x2, y2 in input "
                   "pixels), a centre-ness logit and K class logits; score = sqrt(sigmoid(class) * "
                   "sigmoid(centre-ness)), then class-aware NMS (metadata 'postprocess')")

    def __init__(self, classes, settings: dict | None = None):
        super().__init__(classes, settings)
        self.colours = {c: rgb for c, rgb in zip(self.classes, palette(len(self.classes) + 1)[1:])}

    def describe(self):
        return {"postprocess": self.settings, "palette": [hex_colour(c) for c in self.colours.values()]}

    def prepare(self, img, size, grayscale):
        return tile(img, size, grayscale)

    def _prediction(self, path, outputs, t: Tiles) -> BoxPrediction:
        d = boxes_to_image(outputs, t, self.settings)
        return BoxPrediction(str(path), t.width, t.height, d["boxes"].tolist(),
                             [self.classes[i] for i in d["labels"].tolist()], d["scores"].tolist())

    def predict(self, path, logits, ctx, topk=5):
        return self._prediction(path, logits.float(), ctx), None

    def answer(self, logits, ctx, filename, k):
        pred = self._prediction(filename, torch.from_numpy(np.asarray(logits)), ctx)
        return {"filename": filename, **{k2: v for k2, v in pred.as_json().items() if k2 not in ("path", "files")},
                "colors": {c: hex_colour(rgb) for c, rgb in self.colours.items()}}

    def writer(self, out, source):
        if out is None:
            return Writer()  # boxes are small: printed (or --json) without files
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder for the overlays")
        return BoxWriter(out, self, source)

    # export: raw outputs compared, then the final boxes (after score, threshold and NMS) and mAP
    def compare(self, pixel_model, onnx_model, held, atol, task, cache):
        return compare_boxes(pixel_model, onnx_model, held, task, atol)

    def check_fp32(self, res, atol):
        from ..export.parity import ParityError
        props = res.get("proposal_agreement", 1.0)
        if res["max_abs_diff"] > atol or res["max_box_diff_px"] > BOX_ATOL_PX \
                or res["final_agreement"] < MIN_FINAL_AGREEMENT or props < MIN_FINAL_AGREEMENT:
            raise ParityError(
                f"fp32 ONNX does not match PyTorch on {res['n']} held-out images: max |logit difference| "
                f"{res['max_abs_diff']:.2e} (bound {atol:.0e}), max box difference {res['max_box_diff_px']:.2e} px "
                f"(bound {BOX_ATOL_PX}), proposals matched {100 * props:.2f}%, final detections matched "
                f"{100 * res['final_agreement']:.2f}% (both bound "
                f"{100 * MIN_FINAL_AGREEMENT:.0f}%); nothing was written. This is an exporter bug for this model: "
                "report it with the run's config.yaml (try another --opset)")

    def check_int8(self, res, max_drop, mode):
        from ..export.parity import ParityError
        if res.get("metric") and res["map_drop_points"] > max_drop:
            raise ParityError(
                f"{mode} INT8 model loses {res['map_drop_points']:.2f} mAP points on {res['n']} held-out images "
                f"({100 * res['map_ref']:.2f} -> {100 * res['map']:.2f}, bound {max_drop:.2f}); nothing was written. "
                "Try more calibration images (--calib), or raise the bound with --max-drop")

    def bounds(self, atol, max_drop):
        return {"fp32_max_abs_diff": atol, "fp32_max_box_diff_px": BOX_ATOL_PX,
                "fp32_min_final_agreement": MIN_FINAL_AGREEMENT, "int8_max_drop_points": max_drop}

    def parity_table(self, record):
        par = record["parity"]
        lines = [f"ONNX opset {record['opset']}, {'INT8' if record.get('quantization') else 'fp32'}, output per-location "
                 f"boxes and logits [N, L, 5 + K], decoded and NMS'd outside the graph; checked on {par['images']}:",
                 f"  {'model':<14}{'mAP':>8}{'mAP@.5':>9}{'final match':>13}{'max |dlogit|':>14}{'max |dbox| px':>15}"]
        ref = par["fp32"]
        if ref.get("metric"):
            lines.append(f"  {'pytorch fp32':<14}{ref['map_ref']:>8.4f}{ref['map50_ref']:>9.4f}{'-':>13}{'-':>14}{'-':>15}")
        for kind in ("fp32", "int8"):
            if kind in par:
                r = par[kind]
                m = f"{r['map']:>8.4f}{r['map50']:>9.4f}" if r.get("metric") else f"{'-':>8}{'-':>9}"
                diffs = (f"{r['max_abs_diff']:>14.2e}{r['max_box_diff_px']:>15.2e}"
                         if r.get("proposal_agreement", 1.0) >= MIN_FINAL_AGREEMENT else f"{'-':>14}{'-':>15}")
                lines.append(f"  {'onnx ' + kind:<14}{m}{100 * r['final_agreement']:>12.2f}%{diffs}")
        if "proposal_agreement" in ref:  # a two-stage model: rows are proposals, compared as a set
            lines.append(f"  proposals PyTorch's that ONNX also gives (boxes within {BOX_ATOL_PX} px): " + ", ".join(
                f"{kind} {100 * par[kind]['proposal_agreement']:.2f}%" for kind in ("fp32", "int8") if kind in par))
        return "\n".join(lines)


BOX_ATOL_PX = 1e-2  # fp32: the decoded boxes of ONNX and PyTorch agree to a hundredth of a pixel
MIN_FINAL_AGREEMENT = 0.99  # fp32: share of PyTorch's final detections ONNX also gives (same class, IoU >= 0.99)


def _matched(ref: list[dict], got: list[dict]) -> tuple[int, int]:
    """(PyTorch detections scoring >= DRAW_MIN_SCORE, how many of them ONNX gives too: same class, IoU >= 0.99)."""
    from ..ops.boxes import box_iou
    total = hit = 0
    for r, g in zip(ref, got):
        keep = r["scores"] >= DRAW_MIN_SCORE
        rb, rl = r["boxes"][keep], r["labels"][keep]
        total += len(rb)
        if len(rb) and len(g["boxes"]):
            iou = box_iou(rb, g["boxes"])
            same = rl[:, None] == g["labels"][None, :]
            hit += int(((iou >= 0.99) & same).any(1).sum())
    return total, hit


def align_proposals(ref: torch.Tensor, got: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage outputs ``[B, R * k, 5 + k]`` hold k rows per proposal, proposals by score: two runtimes may
    order near-tied proposals differently, or keep another one at the NMS threshold, which moves whole rows.
    -> (``got`` with each proposal's k rows moved to where ``ref`` has the proposal with the nearest boxes,
    bool ``[B, R]``: ref's proposals whose boxes ``got`` has within ``BOX_ATOL_PX``)."""
    b, n, c = ref.shape
    rb, gb = ref.reshape(b, n // k, k, c), got.reshape(b, n // k, k, c)
    dist = torch.cdist(rb[..., :4].flatten(2), gb[..., :4].flatten(2), p=float("inf"))  # [B, R, R]: max |d box|
    near, pick = dist.min(-1)
    aligned = gb.gather(1, pick[..., None, None].expand(-1, -1, k, c))
    return aligned.reshape(b, n, c), near <= BOX_ATOL_PX


@torch.no_grad()
def compare_boxes(model, clf, held, task, atol: float, batch: int = 32) -> dict:
    """PyTorch ``model`` vs an ``OnnxModel`` ``clf`` on ``held.pixels``: the raw outputs (class and
    centre-ness logits, decoded boxes; for a model whose ``rows_are_a_set`` (Faster R-CNN's proposals), after
    matching the proposals both give: ``proposal_agreement``, see ``align_proposals``), the final detections
    (``final_agreement``: see ``_matched``), and with targets mAP / mAP@.5 of both (``map_ref``, ``map``,
    ``map_drop_points``)."""
    from ..metrics.detection import DetectionMetric
    n = len(held.pixels)
    size = tuple(held.pixels.shape[-2:])
    max_d = max_box = 0.0
    total = hit = props = props_same = 0
    targets = held.targets if held.targets and "labels" in held.targets else None
    m_ref, m_got = (DetectionMetric(clf.classes), DetectionMetric(clf.classes)) if targets else (None, None)
    for i in range(0, n, batch):
        x = held.pixels[i:i + batch]
        ref = model(x).float()
        got = torch.from_numpy(np.asarray(clf.predict_pixels(x.numpy()), dtype=np.float32))
        if ref.shape != got.shape:
            from ..export.parity import ExportError
            raise ExportError(f"exported model gives outputs of shape {tuple(got.shape)}, PyTorch gives {tuple(ref.shape)}")
        ra, ga = ref, got  # the rows compared
        if getattr(model, "rows_are_a_set", False):
            ga, same = align_proposals(ref, got, ref.shape[-1] - 5)
            props, props_same = props + same.numel(), props_same + int(same.sum())
            rows = same.repeat_interleave(ref.shape[-1] - 5, 1)  # [B, R * K]
            ra, ga = ref[rows], ga[rows]
        if ra.numel():
            max_d = max(max_d, float((ra[..., 4:] - ga[..., 4:]).abs().max()))
            max_box = max(max_box, float((ra[..., :4] - ga[..., :4]).abs().max()))
        dr, dg = task.postprocess(ref, size), task.postprocess(got, size)
        t, h = _matched(dr, dg)
        total, hit = total + t, hit + h
        if targets:
            tg = [{"boxes": b, "labels": lab} for b, lab in zip(targets["boxes"][i:i + batch], targets["labels"][i:i + batch])]
            m_ref.update(dr, tg)
            m_got.update(dg, tg)
    out = {"n": int(n), "max_abs_diff": max_d, "max_box_diff_px": max_box,
           "final_agreement": hit / total if total else 1.0, "final_detections": total}
    if props:
        out["proposal_agreement"] = props_same / props
    if targets:
        r, g = m_ref.compute(), m_got.compute()
        out.update({"map_ref": r["map"], "map": g["map"], "map50_ref": r["map50"], "map50": g["map50"],
                    "map_drop_points": round(100 * (r["map"] - g["map"]), 4), "metric": "map"})
    return out

