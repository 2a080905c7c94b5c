"""Semantic segmentation data: ``SegmentationDataset`` and the shared decode path of every mask source.

``build_split`` decodes image + target pairs at one square side and caches the result, for
the mask-PNG and Pascal VOC loaders below and the COCO loader (``coco.py``).  The geometry
is ``image_to_uint8``'s (scale the shorter side to ``size``, crop the centre), so ``predict``
sees training pixels.  Images are resized bilinear (antialiased) and masks NEAREST with the
same crop box, because interpolating between class indices makes up classes.  Boxes go
through the same crop and scale.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import cache
from .errors import BadImageError, DataError
from .images import DEFAULT_MAX_PIXELS, image_to_uint8, load_image

IGNORE_INDEX = 255  # a mask value that is no class: VOC's object borders, COCO crowds; losses skip it

# What a source gives for one image, at the image's own size: mask uint8 [H, W],
# boxes float32 [M, 4] (xyxy pixels) or None, box labels int64 [M] or None.
Target = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]
# One sample: (image file, function (width, height) of the decoded image -> its Target).  The
# function raises DataError (naming the file or annotation) when the target is unusable.
Sample = tuple[str, Callable[[int, int], Target]]


@dataclass
class SegmentationDataset:
    """One split, in memory (like ``ImageDataset``; the engine indexes whole batches).

    images:     uint8 ``[N, C, H, W]``, C in {1, 3}, one H, W for all.
    masks:      uint8 ``[N, H, W]``: class index, or ``IGNORE_INDEX`` (255) for "no label here".
    classes:    class names, index = mask value (index 0 is "background" for COCO, VOC and scenes).
    name:       e.g. ``"coco/train"``.
    paths:      the image file of each item, or None.
    skipped:    ``(path, reason)`` of each file or annotation left out while building this split.
    boxes:      per image float32 ``[M_i, 4]`` xyxy pixels of the instances (COCO, scenes), else None.
    box_labels: per image int64 ``[M_i]``, the class index of each box.
    """

    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    name: str
    paths: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    boxes: list[torch.Tensor] | None = None
    box_labels: list[torch.Tensor] | None = None

    def __post_init__(self):
        im, m, k = self.images, self.masks, len(self.classes)
        if im.dtype != torch.uint8 or im.dim() != 4 or im.shape[1] not in (1, 3):
            raise ValueError(f"{self.name}: images must be uint8 [N, C in (1, 3), H, W], "
                             f"got {im.dtype} {tuple(im.shape)}")
        n, _, h, w = im.shape
        if m.dtype != torch.uint8 or tuple(m.shape) != (n, h, w):
            raise ValueError(f"{self.name}: masks must be uint8 [{n}, {h}, {w}], got {m.dtype} {tuple(m.shape)}")
        if not 1 <= k <= IGNORE_INDEX:
            raise ValueError(f"{self.name}: {k} classes; a uint8 mask holds 1 to {IGNORE_INDEX}")
        bad = (m >= k) & (m != IGNORE_INDEX) if m.numel() and int(m.max()) >= k else None  # max(): the fast path
        if bad is not None and bad.any():
            i = int(bad.flatten(1).any(1).nonzero()[0])
            raise ValueError(f"{self.name}: mask {i} holds value {int(m[i][bad[i]][0])}, not a class (0..{k - 1}) "
                             f"nor {IGNORE_INDEX} (ignore)")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {n} images")
        if (self.boxes is None) != (self.box_labels is None):
            raise ValueError(f"{self.name}: boxes and box_labels go together")
        if self.boxes is not None:
            if len(self.boxes) != n or len(self.box_labels) != n:
                raise ValueError(f"{self.name}: {len(self.boxes)} box lists for {n} images")
            for i, (b, lab) in enumerate(zip(self.boxes, self.box_labels)):
                if b.dtype != torch.float32 or b.dim() != 2 or b.shape[1] != 4 or lab.dtype != torch.int64 \
                        or tuple(lab.shape) != (b.shape[0],) or (lab.numel() and (lab.min() < 0 or lab.max() >= k)):
                    raise ValueError(f"{self.name}: image {i}: boxes must be float32 [M, 4] with int64 [M] "
                                     f"labels in 0..{k - 1}, got {tuple(b.shape)} {b.dtype}, {tuple(lab.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_pixel_counts(self) -> torch.Tensor:
        """int64 ``[num_classes]``: labelled pixels per class (ignored pixels not counted)."""
        return torch.bincount(self.masks.flatten(), minlength=256)[:len(self.classes)]  # uint8 in: no 8x copy

    def subset(self, idx: torch.Tensor, name: str | None = None) -> "SegmentationDataset":
        """The items at ``idx`` (int64 ``[M]`` or bool ``[N]``), in that order; ``skipped`` is not carried."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        il = idx.long().tolist()
        pick = (lambda xs: [xs[i] for i in il] if xs is not None else None)
        return SegmentationDataset(self.images[idx.long()], self.masks[idx.long()], list(self.classes),
                                   name or self.name, pick(self.paths), [], pick(self.boxes), pick(self.box_labels))

    def renamed(self, name: str, skipped: list[tuple[str, str]] | None = None) -> "SegmentationDataset":
        """The same tensors under another name (and optionally another skipped list); no copy."""
        return SegmentationDataset(self.images, self.masks, self.classes, name, self.paths,
                                   list(self.skipped if skipped is None else skipped), self.boxes, self.box_labels)


def fit_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square crop ``(left, top, right, bottom)`` that ``ImageOps.fit`` (so ``image_to_uint8``) takes."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def fit_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[size, size]``: ``fit_box`` crop, NEAREST resize (labels are never blended)."""
    h, w = mask.shape
    if (h, w) == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST, box=fit_box(w, h)))


def fit_boxes(boxes: np.ndarray, width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``[M, 4]`` xyxy at the image's size -> (``[M', 4]`` at ``size``, bool ``[M]`` kept).

    Boxes are cropped and scaled like the pixels and clipped to the image; a box left with no
    area (it lay in the cropped-off ends) is dropped.
    """
    left, top, right, _ = fit_box(width, height)
    b = (boxes.reshape(-1, 4).astype(np.float64) - [left, top, left, top]) * (size / (right - left))
    b = np.clip(b, 0, size)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[keep].astype(np.float32), keep


def _cache_file(samples: list[Sample], key_files: list[str], settings: dict) -> Path:
    base = cache.cache_key([p for p, _ in samples] + list(key_files), settings["size"], settings["grayscale"],
                           settings["max_pixels"])
    h = hashlib.sha256((base + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:32]
    return cache.cache_dir() / f"segmentation-{h}.pt"


def build_split(samples: list[Sample], classes: list[str], name: str, size: int, *, grayscale: bool = False,
                strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, skipped=(), key_files=(),
                key_extra=None, with_boxes: bool = False, where: str = "",
                use_cache: bool = True) -> SegmentationDataset:
    """Decode ``samples`` into a ``SegmentationDataset`` at ``size`` (cached in ``$VISIONSMITH_HOME/cache``).

    ``skipped`` holds what the caller already left out; images that fail to decode and targets
    that raise ``DataError`` are added (with ``strict`` the first one raises instead, also from the
    cache).  ``key_files`` (mask files, the annotation file) and ``key_extra`` enter the cache key
    next to the image files, by path, size and mtime: editing any of them re-decodes.
    """
    settings = {"kind": "segmentation-v1", "size": size, "grayscale": bool(grayscale), "max_pixels": int(max_pixels),
                "classes": list(classes), "boxes": with_boxes, "extra": key_extra}
    file = _cache_file(samples, key_files, settings)
    blob = cache.read_blob(file) if use_cache else None
    if blob is not None:
        cache.stats["cache_hits"] += 1
        bad = list(zip(blob["skipped_paths"], blob["skipped_reasons"]))
        if strict and bad:
            raise DataError(f"{bad[0][0]}: {bad[0][1]}")
        boxes = labels = None
        if with_boxes:
            counts = blob["box_counts"].tolist()
            boxes, labels = list(blob["boxes"].split(counts)), list(blob["box_labels"].split(counts))
        return SegmentationDataset(blob["images"], blob["masks"], list(classes), name, list(blob["paths"]),
                                   list(skipped) + bad, boxes, labels)

    def one(sample: Sample):
        path, target = sample
        try:
            img = load_image(path, grayscale, max_pixels)
            mask, b, lab = target(*img.size)
            if mask.shape != (img.size[1], img.size[0]):
                raise DataError(f"{path}: its mask is {mask.shape[1]}x{mask.shape[0]}, "
                                f"the image {img.size[0]}x{img.size[1]}")
        except DataError as e:  # BadImageError is one
            if strict:
                raise
            return e
        w, h = img.size
        if b is not None:
            b, keep = fit_boxes(b, w, h, size)
            lab = np.asarray(lab, dtype=np.int64).reshape(-1)[keep]
        return image_to_uint8(img, size, grayscale), torch.from_numpy(np.array(fit_mask(mask, size))), b, lab

    from tqdm import tqdm

    kept, images, masks, boxes, labels, bad = [], [], [], [], [], []
    quiet = len(samples) <= cache.PROGRESS_MIN_FILES or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool, \
            tqdm(total=len(samples), desc=f"decoding {name}", unit="img", file=sys.stderr, disable=quiet) as bar:
        try:
            for (path, _), out in zip(samples, pool.map(one, samples)):  # in order: strict raises the first
                bar.update()
                if isinstance(out, BadImageError):
                    bad.append((out.path, out.reason))
                elif isinstance(out, DataError):
                    bad.append((path, str(out)))
                else:
                    kept.append(path)
                    images.append(out[0])
                    masks.append(out[1])
                    boxes.append(torch.from_numpy(out[2] if out[2] is not None else np.zeros((0, 4), np.float32)))
                    labels.append(torch.from_numpy(out[3] if out[3] is not None else np.zeros(0, np.int64)))
        except DataError:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    skipped = list(skipped) + bad
    if not kept:
        why = f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise DataError(f"no usable images in {where or name} ({len(skipped)} skipped{why})")
    ds = SegmentationDataset(torch.stack(images), torch.stack(masks), list(classes), name, kept, skipped,
                             boxes if with_boxes else None, labels if with_boxes else None)
    if use_cache:
        blob = {"images": ds.images, "masks": ds.masks, "paths": kept,
                "skipped_paths": [p for p, _ in bad], "skipped_reasons": [r for _, r in bad]}
        if with_boxes:
            blob.update(boxes=torch.cat(boxes), box_labels=torch.cat(labels),
                        box_counts=torch.tensor([len(b) for b in boxes], dtype=torch.long))
        cache.write_blob(file, blob)
    return ds


# ---- mask files: root/images + root/masks, and Pascal VOC --------------------------------------------------

SPLIT_NAMES = ("train", "val", "test")
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
Palette = dict[tuple[int, int, int], int]  # RGB colour -> mask value


def read_class_file(path: Path) -> tuple[list[str], Palette | None]:
    """``classes.txt`` / ``palette.txt``: one class a line (line index = mask value), ``name`` or
    ``name r g b`` (``palette.txt`` may also hold bare ``r g b``).  Blank and ``#`` lines are skipped.
    -> (names, palette or None when no line has a colour)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    names, colours = [], []
    for no, line in enumerate(lines, 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        rgb = tok[-3:] if len(tok) >= 3 and all(t.isdigit() for t in tok[-3:]) else None
        if rgb and any(int(t) > 255 for t in rgb):
            raise DataError(f"{path} line {no}: colour {' '.join(rgb)} is not three values 0..255")
        names.append(" ".join(tok[:-3]) if rgb else " ".join(tok))
        colours.append(tuple(map(int, rgb)) if rgb else None)
    if not names:
        raise DataError(f"{path} lists no classes; write one class name a line (line index = mask value)")
    if all(c is None for c in colours):
        return names, None
    if any(c is None for c in colours):
        raise DataError(f"{path} line {colours.index(None) + 1}: no colour, but other lines have one; "
                        "give every class its r g b or none")
    if len(set(colours)) < len(colours):
        raise DataError(f"{path}: two classes share one colour")
    return names, {c: v for v, c in enumerate(colours)}


def _open_raw(path: Path, max_pixels: int) -> Image.Image:
    """A mask file as stored (no mode conversion: a palette PNG keeps its indices), or ``BadImageError``."""
    import io
    import warnings
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(path, f"cannot read the mask file: {e.strerror or e}") from None
    if not data:
        raise BadImageError(path, "zero-byte mask file (empty)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            if im.size[0] * im.size[1] > max_pixels:
                raise BadImageError(path, f"decompression bomb: {im.size[0]}x{im.size[1]} mask is above "
                                          f"{max_pixels} pixels")
            im.load()
        except BadImageError:
            raise
        except Exception as e:  # not an image, truncated, corrupt: Pillow raises many kinds
            raise BadImageError(path, f"not a readable mask image ({type(e).__name__}: {e})") from None
    return im


def read_mask(path: Path, palette: Palette | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask file -> uint8 ``[H, W]`` of mask values.

    Palette (``P``) PNGs give their indices (VOC), grayscale (``L``, ``1``, 16-bit) their values,
    RGB(A) masks are mapped through ``palette``; a colour not in it is a ``DataError`` naming the
    file, the colour and where it first occurs.
    """
    im = _open_raw(path, max_pixels)
    mode = im.mode
    if mode in ("P", "PA", "L", "LA", "1") or mode.startswith("I"):
        a = np.asarray(im)
        a = a[..., 0] if a.ndim == 3 else a
        if a.size and int(a.max()) > 255:
            raise DataError(f"{path}: {mode} mask holds value {int(a.max())}; mask values are 0..255")
        return a.astype(np.uint8)
    if mode not in ("RGB", "RGBA"):
        raise DataError(f"{path}: mask mode {mode!r} is not supported; save masks as palette, grayscale or RGB PNGs")
    if palette is None:
        raise DataError(f"{path}: RGB mask but no palette; add root/palette.txt (or classes.txt lines "
                        "`name r g b`), or save the masks as palette/grayscale PNGs of class indices")
    rgb = np.asarray(im)[..., :3].astype(np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inv = np.unique(code, return_inverse=True)
    lut = np.array([palette.get(((c >> 16) & 255, (c >> 8) & 255, c & 255), -1) for c in uniq.tolist()])
    if (lut < 0).any():
        c = int(uniq[np.argmax(lut < 0)])
        y, x = np.argwhere(code == c)[0]
        raise DataError(f"{path}: colour ({c >> 16}, {(c >> 8) & 255}, {c & 255}) at x={x} y={y} is not in the "
                        f"palette; add it as a class or repaint it")
    return lut[inv.reshape(code.shape)].astype(np.uint8)


def _pair(image: str, mask: Path, classes: list[str], palette: Palette | None, max_pixels: int) -> Sample:
    def target(w: int, h: int) -> Target:
        m = read_mask(mask, palette, max_pixels)
        if m.shape != (h, w):
            hint = " (transposed: the image's EXIF orientation rotates it?)" if m.shape == (w, h) else ""
            raise DataError(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} but its image {image} is {w}x{h}{hint}")
        bad = np.unique(m[(m >= len(classes)) & (m != IGNORE_INDEX)])
        if bad.size:
            raise DataError(f"{mask}: mask values {', '.join(map(str, bad[:5].tolist()))} are not classes "
                            f"(0..{len(classes) - 1}) nor {IGNORE_INDEX} (ignore)")
        return m, None, None
    return image, target


def _files(folder: Path, skipped: list[tuple[str, str]]) -> dict[str, str]:
    """``{relative path without extension: file}`` of every visible file under ``folder``; a second file of
    the same name (``a.jpg`` next to ``a.png``) is added to ``skipped``."""
    out = {}
    for dirpath, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                p = os.path.join(dirpath, f)
                key = os.path.splitext(os.path.relpath(p, folder))[0]
                if key in out:
                    skipped.append((p, f"same name as {out[key]}; which one goes with the mask is ambiguous"))
                else:
                    out[key] = p
    return out


def _pairs(folder: Path, strict: bool) -> tuple[list, list[tuple[str, str]]]:
    """Match ``folder/images`` to ``folder/masks`` by name -> ([(image, mask path)], skipped); files
    without a partner are skipped (raised with ``strict``)."""
    from .images import IMAGE_EXTENSIONS, has_image_extension
    pairs, skipped = [], []
    images, masks = _files(folder / "images", skipped), _files(folder / "masks", skipped)
    for key, img in images.items():
        mask = masks.get(key)
        if not has_image_extension(img):
            skipped.append((img, f"not an image file extension; images are {' '.join(IMAGE_EXTENSIONS)}"))
            continue
        if mask is None or not mask.lower().endswith(".png"):
            why = (f"its mask {mask} is not a PNG (JPEG compression changes label values)" if mask
                   else "no mask with the same name (masks are <name>.png)")
            if strict:
                raise DataError(f"{img}: {why}")
            skipped.append((img, why))
            continue
        pairs.append((img, Path(mask)))
    for key in sorted(set(masks) - set(images)):
        if strict:
            raise DataError(f"{masks[key]}: mask without an image of the same name")
        skipped.append((masks[key], "mask without an image of the same name"))
    return pairs, skipped


def load_masks(root: str | os.PathLike, size: int, classes: list[str] | None = None, grayscale: bool = False,
               strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, SegmentationDataset]:
    """``root/images/<name>.<ext>`` + ``root/masks/<name>.png`` (or ``root/{train,val,test}/images|masks``)
    -> ``{"train", ["val"], ["test"]}`` at ``size``: images uint8 ``[N, C, size, size]``, masks ``[N, size, size]``.

    Classes: ``classes``, else ``root/classes.txt``; RGB masks need colours (``root/palette.txt`` or
    ``classes.txt`` lines ``name r g b``).  Bad pairs are skipped and listed (raised with ``strict``).
    """
    root = Path(root).expanduser()
    if (root / "images").is_dir():
        layout = {"train": root}
    else:
        layout = {s: root / s for s in SPLIT_NAMES if (root / s / "images").is_dir()}
        if "train" not in layout:
            raise DataError(f"{root}: expected {root}/images and {root}/masks (or train/images, train/masks)")
    names, palette = read_class_file(root / "classes.txt") if (root / "classes.txt").is_file() else (None, None)
    if (root / "palette.txt").is_file():
        pnames, palette = read_class_file(root / "palette.txt")
        if palette is None:
            raise DataError(f"{root / 'palette.txt'}: no colours; write one `r g b` (or `name r g b`) a class")
        names = names or (pnames if all(pnames) else None)  # bare `r g b` lines name no class
    classes = list(classes or names or [])
    if not classes:
        raise DataError(f"no class list for {root}: write {root / 'classes.txt'} (one name a line, line index = "
                        "mask value) or pass classes")
    out = {}
    for split, folder in layout.items():
        if not (folder / "masks").is_dir():
            raise DataError(f"{folder / 'masks'} does not exist: every image needs a mask <name>.png there")
        pairs, skipped = _pairs(folder, strict)
        if not pairs:
            raise DataError(f"no image with a mask in {folder} ({len(skipped)} files skipped"
                            + (f", e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ")"))
        samples = [_pair(img, m, classes, palette, max_pixels) for img, m in pairs]
        out[split] = build_split(samples, classes, f"masks/{split}", size, grayscale=grayscale, strict=strict,
                                 max_pixels=max_pixels, skipped=skipped, key_files=[str(m) for _, m in pairs],
                                 key_extra=sorted(map(list, palette)) if palette else None, where=str(folder))
    return out


def load_voc(root: str | os.PathLike, size: int, grayscale: bool = False, strict: bool = False,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, SegmentationDataset]:
    """Pascal VOC: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs, 255 = border =
    ignore), ``ImageSets/Segmentation/{train,val}.txt`` -> ``{"train", "val"}`` with the 21 VOC classes.
    ``root`` may be the ``VOC2012`` folder or a folder above it; without ``ImageSets`` every mask is train."""
    root = Path(root).expanduser()
    for sub in ("", "VOC2012", "VOCdevkit/VOC2012", "VOC2007", "VOCdevkit/VOC2007"):
        if (root / sub / "SegmentationClass").is_dir():
            root = root / sub
            break
    else:
        raise DataError(f"{root}: no SegmentationClass folder; expected a Pascal VOC folder (JPEGImages, "
                        "SegmentationClass, ImageSets/Segmentation)")
    lists = root / "ImageSets" / "Segmentation"
    if (lists / "train.txt").is_file():
        ids = {s: (lists / f"{s}.txt").read_text().split() for s in ("train", "val") if (lists / f"{s}.txt").is_file()}
    else:
        ids = {"train": sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))}
    out = {}
    for split, names in ids.items():
        pairs, skipped = [], []
        for i in names:
            img, mask = root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png"
            if not mask.is_file():
                if strict:
                    raise DataError(f"{img}: no mask {mask} (listed in {lists / (split + '.txt')})")
                skipped.append((str(img), f"no mask {mask}"))
            else:
                pairs.append((str(img), mask))
        if not pairs:
            raise DataError(f"no image with a mask in {root} for {split} ({len(names)} listed)")
        samples = [_pair(img, m, VOC_CLASSES, None, max_pixels) for img, m in pairs]
        out[split] = build_split(samples, VOC_CLASSES, f"voc/{split}", size, grayscale=grayscale, strict=strict,
                                 max_pixels=max_pixels, skipped=skipped, key_files=[str(m) for _, m in pairs],
                                 where=str(root))
    return out


def held_out(ds: SegmentationDataset, fraction: float, seed: int, salt: int):
    """(rest, held): a random ``fraction`` of ``ds`` held out, by ``seed`` (masks and boxes have no stratum)."""
    n = len(ds)
    k = int(round(n * fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + salt))
    return ds.subset(perm[k:].sort().values), ds.subset(perm[:k].sort().values)


def complete_splits(src: dict, data, seed: int, what: str = "images") -> dict:
    """``{"train", "val", "test"}`` from a source's splits (``data``: the run's ``DataConfig``): a missing
    test split is held out of train by ``data.test_fraction`` with a fixed seed (every run scores on the
    same images), a missing val split by ``data.val_fraction`` and ``seed``; ``data.train_limit`` keeps
    that many training items; splits are named ``<data.name>/<split>``.  ``what`` words the empty-train error."""
    train = src["train"]
    if not len(train):
        raise DataError(f"data.name={data.name}: no training {what} were found")
    test = src.get("test")
    if test is None:
        train, test = held_out(train, data.test_fraction, 0, 1)
    val = src.get("val")
    if val is None:
        train, val = held_out(train, data.val_fraction, seed, 2)
    if data.train_limit is not None:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1000 + 3))
                             [:data.train_limit].sort().values)
    return {"train": train.renamed(f"{data.name}/train", src["train"].skipped),
            "val": val.renamed(f"{data.name}/val"), "test": test.renamed(f"{data.name}/test")}
