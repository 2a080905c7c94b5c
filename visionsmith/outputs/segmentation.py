"""Segmentation outputs: windows at the training scale, stitched class maps, mask and overlay PNGs,
per-pixel parity on export."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError
from .base import (BACKGROUND_NAMES, MAX_WINDOWS, OVERLAY_ALPHA, FolderWriter, TaskOutput, register_output,
                   write_atomic)


# -- segmentation: windows, stitching, masks, overlays --------------------------------------------------

def palette(n: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map for ``n`` classes (class 0 black, 1 dark red, 2 dark green, ...):
    the colours most segmentation tools and datasets show masks in."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def background_index(classes: list[str]) -> int | None:
    """The class that overlays leave uncoloured: the first one named like "background", if any."""
    return next((i for i, c in enumerate(classes) if c.strip().lower() in BACKGROUND_NAMES), None)


def hex_colour(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass
class Tiles:
    """How one image was cut into model windows: the input was ``width`` x ``height``, resized to
    ``rw`` x ``rh`` (shorter side ``size``), and ``offsets`` are the ``(left, top)`` of each
    ``size`` x ``size`` window in that resized image."""
    width: int
    height: int
    rw: int
    rh: int
    size: int
    offsets: list[tuple[int, int]]


def tile(img: Image.Image, size: int, grayscale: bool) -> tuple[torch.Tensor, Tiles]:
    """A decoded image -> (uint8 windows ``[n, C, size, size]``, their ``Tiles``).

    Shorter side scaled to ``size`` with the resampling ``image_to_uint8`` uses (a square image
    gives exactly ``image_to_uint8``'s one window), then ``n = ceil(longer / size)`` windows spread
    evenly from one end to the other (the last overlaps its neighbour); at most ``MAX_WINDOWS``:
    a longer strip is squeezed along its long side to fit."""
    from ..data.images import _RESAMPLE
    mode = "L" if grayscale else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    w, h = img.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    rw, rh = min(rw, MAX_WINDOWS * size), min(rh, MAX_WINDOWS * size)
    if (rw, rh) != (w, h):
        img = img.resize((rw, rh), _RESAMPLE)
    a = np.asarray(img, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # [C, rh, rw]
    longer = max(rw, rh)
    n = math.ceil(longer / size)
    starts = [round(i * (longer - size) / (n - 1)) for i in range(n)] if n > 1 else [0]
    offsets = [(s, 0) for s in starts] if rw >= rh else [(0, s) for s in starts]
    windows = np.stack([a[:, y:y + size, x:x + size] for x, y in offsets])
    return torch.from_numpy(np.ascontiguousarray(windows)), Tiles(w, h, rw, rh, size, offsets)


def stitch(logits: torch.Tensor, t: Tiles) -> tuple[np.ndarray, float]:
    """The windows' logits ``[n, K, S, S]`` -> (class map ``[height, width]`` of the input image,
    uint8 when K <= 256 else int32; the mean softmax confidence of the predicted classes).

    Logits at the model's side S are resized (bilinear) to the window side when the two differ,
    averaged where windows overlap, and the class map goes back to the input size with nearest."""
    logits = logits.float()
    s = t.size
    if logits.shape[-1] != s or logits.shape[-2] != s:
        logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
    k = logits.shape[1]
    if len(t.offsets) == 1:
        acc = logits[0]
    else:
        acc = torch.zeros(k, t.rh, t.rw)
        cnt = torch.zeros(1, t.rh, t.rw)
        for (x, y), lg in zip(t.offsets, logits):
            acc[:, y:y + s, x:x + s] += lg
            cnt[:, y:y + s, x:x + s] += 1
        acc /= cnt
    conf, cls = acc.softmax(0).max(0)
    small = cls.numpy().astype(np.uint8 if k <= 256 else np.int32)
    if (t.rw, t.rh) != (t.width, t.height):
        if k <= 256:
            small = np.asarray(Image.fromarray(small, mode="L").resize((t.width, t.height), Image.Resampling.NEAREST))
        else:
            small = F.interpolate(torch.from_numpy(small)[None, None].float(), size=(t.height, t.width),
                                  mode="nearest-exact")[0, 0].numpy().astype(np.int32)
    return np.ascontiguousarray(small), float(conf.mean())


def class_fractions(cls_map: np.ndarray, k: int) -> np.ndarray:
    """float64 ``[K]``: each class's share of the map's pixels."""
    counts = np.bincount(cls_map.ravel(), minlength=k)[:k].astype(np.float64)
    return counts / max(1, cls_map.size)


def mask_png(cls_map: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """The class map as PNG bytes: a palette PNG whose pixel values are the class indices and whose
    palette holds the class colours (viewers show colours; ``np.asarray(Image.open(f))`` gives
    indices); with more than 256 classes a 16-bit grayscale PNG of the indices."""
    buf = io.BytesIO()
    if cls_map.dtype == np.uint8:
        im = Image.fromarray(cls_map, mode="P")
        flat = [v for rgb in colours[:256] for v in rgb]
        im.putpalette(flat + [0] * (768 - len(flat)))
    else:
        im = Image.fromarray(cls_map.astype(np.uint16))
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font, bundled
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def _pct(f: float) -> str:
    return f"{100 * f:.1f}%" if f >= 0.0005 else "<0.1%"


def overlay(img: Image.Image, cls_map: np.ndarray, classes: list[str], colours, fractions: np.ndarray,
            alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image with each pixel's class colour blended in at ``alpha`` (the background class left as
    it is), and a legend panel on the right: a swatch, the name and the area of every class found.

    The image keeps its size and sits at the top left; the result is wider by the legend (and
    taller when the legend needs more rows than the image has height)."""
    blended = np.array(img.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a copy to blend into
    bg = background_index(classes)
    coloured = cls_map != bg if bg is not None else np.ones(cls_map.shape, bool)
    # Integer blend on the coloured pixels only: a 24 MP photo stays a few hundred MB, not gigabytes.
    a = int(round(alpha * 256))
    col = np.asarray(colours, dtype=np.uint16)[cls_map[coloured]]
    blended[coloured] = ((blended[coloured].astype(np.uint16) * (256 - a) + col * a + 128) >> 8).astype(np.uint8)
    h, w = cls_map.shape
    present = [i for i in np.argsort(-fractions, kind="stable") if fractions[i] > 0]
    fs = int(min(48, max(11, h / 24)))
    font = _font(fs)
    pad, sw = fs // 2, fs
    labels = [f"{classes[i]}  {_pct(fractions[i])}" + (" (not coloured)" if i == bg else "") for i in present]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(t, font=font) for t in labels), default=0)
    row = fs + pad
    panel_w = int(pad * 3 + sw + text_w + pad)
    panel_h = pad * 2 + row * len(labels)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(blended, "RGB"), (0, 0))
    d = ImageDraw.Draw(canvas)
    for r, (i, t) in enumerate(zip(present, labels)):
        y = pad + r * row
        box = (w + pad, y, w + pad + sw, y + sw)
        if i == bg:
            d.rectangle(box, outline=(120, 120, 120), width=max(1, fs // 10))
        else:
            d.rectangle(box, fill=tuple(int(v) for v in colours[i]), outline=(60, 60, 60))
        d.text((w + 2 * pad + sw, y), t, fill=(20, 20, 20), font=font)
    return canvas


@dataclass
class MaskPrediction:
    """One image's class mask, summarised: ``fractions`` (class -> share of the image's pixels, every
    class), ``mean_confidence`` (mean softmax probability of the predicted class over the pixels),
    ``files`` (``mask``, ``overlay``, ``json`` paths written by predict)."""
    path: str
    width: int
    height: int
    fractions: dict[str, float]
    mean_confidence: float
    files: dict[str, str] = field(default_factory=dict)
    background: str | None = None

    def main_classes(self, min_fraction: float = 0.01, most: int = 5) -> list[tuple[str, float]]:
        """The classes covering at least ``min_fraction`` of the image, largest first (at most ``most``)."""
        found = sorted(((c, f) for c, f in self.fractions.items() if f >= min_fraction), key=lambda x: -x[1])
        return found[:most]

    def text(self) -> str:
        main = self.main_classes()
        rest = sum(1 for f in self.fractions.values() if 0 < f) - len(main)
        cells = "  ".join(f"{c} {100 * f:.1f}%" for c, f in main) or "no class over 1%"
        more = f"  (+{rest} more)" if rest > 0 else ""
        where = f"  -> {self.files['mask']}" if "mask" in self.files else ""
        return f"{cells}{more}  confidence {self.mean_confidence:.3f}{where}"

    def as_json(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height,
                "fractions": {c: round(f, 6) for c, f in self.fractions.items()},
                "present": [c for c, f in sorted(self.fractions.items(), key=lambda x: -x[1]) if f > 0],
                "mean_confidence": round(self.mean_confidence, 6), "files": dict(self.files)}


class MaskWriter(FolderWriter):
    """predict's files for a segmentation model, in ``out``: per image ``NAME.mask.png`` (palette PNG
    of class indices, the input's size), ``NAME.overlay.png`` and ``NAME.json``; at the end
    ``predictions.json`` with every image and every skipped file.  Each file is written under a
    temporary name and renamed, so a file that is there is whole."""


    def write(self, pred, img, cls_map):
        name = self._name(pred.path)
        files = {"mask": self.out / f"{name}.mask.png", "overlay": self.out / f"{name}.overlay.png",
                 "json": self.out / f"{name}.json"}
        pred.files = {k: str(v) for k, v in files.items()}
        o = self.output
        write_atomic(files["mask"], mask_png(cls_map, o.colours))
        frac = np.array([pred.fractions[c] for c in o.classes])
        buf = io.BytesIO()
        overlay(img, cls_map, o.classes, o.colours, frac).save(buf, format="PNG")
        write_atomic(files["overlay"], buf.getvalue())
        write_atomic(files["json"], json.dumps({**pred.as_json(), "model": self.source, **o.legend()}, indent=2).encode())


@register_output
class MaskOutput(TaskOutput):
    task = "segmentation"
    keeps_image = True
    answer_off_loop = True
    int8_max_drop = 0.5  # mIoU points
    onnx_output = ("logits float32 [N, K, S, S]: per-pixel class scores at the input size "
                   "(argmax over K is the class map, softmax the confidences)")

    def __init__(self, classes, settings=None):
        super().__init__(classes, settings)
        self.colours = palette(len(self.classes))
        self.background = background_index(self.classes)

    def legend(self) -> dict:
        return {"classes": self.classes, "palette": [hex_colour(c) for c in self.colours],
                "background": self.background}

    def describe(self):
        return {"palette": [hex_colour(c) for c in self.colours], "background": self.background}

    def prepare(self, img, size, grayscale):
        return tile(img, size, grayscale)

    def _summary(self, path, logits, t: Tiles):
        cls_map, conf = stitch(logits, t)
        frac = class_fractions(cls_map, len(self.classes))
        bg = self.classes[self.background] if self.background is not None else None
        pred = MaskPrediction(str(path), t.width, t.height, {c: float(f) for c, f in zip(self.classes, frac)},
                              conf, background=bg)
        return pred, cls_map

    def predict(self, path, logits, ctx, topk=5):
        return self._summary(path, logits, ctx)

    def answer(self, logits, ctx, filename, k):
        import base64
        pred, cls_map = self._summary(filename, torch.from_numpy(np.asarray(logits)), ctx)
        return {"filename": filename, "width": pred.width, "height": pred.height,
                "mask": {"png_base64": base64.b64encode(mask_png(cls_map, self.colours)).decode("ascii"),
                         "format": "PNG, palette: pixel value = class index"},
                "fractions": {c: round(f, 6) for c, f in pred.fractions.items()},
                "classes": [{"class": c, "index": i, "fraction": round(pred.fractions[c], 6),
                             "color": hex_colour(self.colours[i])}
                            for i, c in sorted(enumerate(self.classes), key=lambda x: -pred.fractions[x[1]])
                            if pred.fractions[c] > 0],
                "mean_confidence": round(pred.mean_confidence, 6), "background": self.background}

    def writer(self, out, source):
        if out is None:
            raise UserError("a segmentation model's predictions are masks: give a folder for them with --out DIR "
                            "(api: predict(..., out=DIR)); each image gets NAME.mask.png, NAME.overlay.png and NAME.json")
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder for the masks")
        return MaskWriter(out, self, source)

    # export: per-pixel parity, streamed (a split's logits [N, K, S, S] need not fit in memory)
    def compare(self, pixel_model, onnx_model, held, atol, task, cache):
        from ..export.parity import compare_dense
        return compare_dense(pixel_model, onnx_model, held.pixels, held.labels, lambda: task.metric(self.classes),
                             task.target_key, task.headline, atol)

    def check_fp32(self, res, atol):
        from ..export.parity import check_fp32_dense
        check_fp32_dense(res, atol)

    def check_int8(self, res, max_drop, mode):
        from ..export.parity import check_int8_dense
        check_int8_dense(res, max_drop, mode)

    def bounds(self, atol, max_drop):
        from ..export.parity import MIN_PIXEL_AGREEMENT
        return {"fp32_max_abs_diff": atol, "fp32_min_pixel_agreement": MIN_PIXEL_AGREEMENT,
                "int8_max_drop_points": max_drop}

    def parity_table(self, record):
        from ..export.parity import dense_table
        return dense_table(record)
