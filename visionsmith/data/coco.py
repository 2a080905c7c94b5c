"""COCO instance annotations: read them into ``SegmentationDataset``s (semantic masks + boxes), write them.

Reading: category ids (any integers) become contiguous class indices 1..K in id order, index 0 is
``background`` (pixels no annotation covers).  Each image's semantic mask paints its annotations in
file order (a later one covers an earlier one); ``iscrowd`` regions are painted ``IGNORE_INDEX``
and give no box.  Polygons and RLE (compressed string or uncompressed list counts) are decoded
by pycocotools, after checking them here: pycocotools reads past the end of a malformed RLE.
An image without annotations is valid (all background).  A bad annotation makes its whole image
unusable (its mask would be wrong), so the image is skipped and listed, or raised with ``strict``;
so is an image entry whose ``file_name`` an earlier entry already has.  A ``bbox`` of zero or
negative width or height loses only its box (listed); a repeated image id is a ``DataError``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .images import DEFAULT_MAX_PIXELS
from .segmentation import (
    IGNORE_INDEX,
    SPLIT_NAMES,
    SegmentationDataset,
    Target,
    build_split,
)

BACKGROUND = "background"


def read_coco(path: str | os.PathLike) -> dict:
    """The parsed annotation file, after checking its shape (``images``, ``annotations``, ``categories``)."""
    path = Path(path)
    try:
        coco = json.loads(path.read_bytes())
    except OSError as e:
        raise DataError(f"cannot read the COCO file {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e}); expected a COCO instances file") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                        "categories")):
        raise DataError(f"{path}: not a COCO instances file; it needs the lists images, annotations and categories")
    for what, keys in (("images", ("id", "file_name")), ("categories", ("id", "name")),
                       ("annotations", ("image_id", "category_id"))):
        for i, item in enumerate(coco[what]):
            if not isinstance(item, dict) or any(k not in item for k in keys):
                raise DataError(f"{path}: {what}[{i}] lacks {' or '.join(keys)}")
            bad = next((k for k in keys if k != "name" and not isinstance(item[k], (int, str))), None)
            if bad:
                raise DataError(f"{path}: {what}[{i}].{bad} is {item[bad]!r}, not a number or string")
    ids = [c["id"] for c in coco["categories"]]
    if len(set(ids)) < len(ids):
        raise DataError(f"{path}: category id {next(i for i in ids if ids.count(i) > 1)} appears twice")
    seen = set()
    for im in coco["images"]:  # annotations name images by id: a repeated id makes them ambiguous
        if im["id"] in seen:
            raise DataError(f"{path}: image id {im['id']} appears twice in images; give each image its own id")
        seen.add(im["id"])
    if not ids:
        raise DataError(f"{path}: no categories")
    return coco


def class_list(coco: dict) -> tuple[list[str], dict[int, int]]:
    """-> (``["background", name of the smallest id, ...]``, {category id: class index 1..K})."""
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    return [BACKGROUND] + [str(c["name"]) for c in cats], {c["id"]: k for k, c in enumerate(cats, 1)}


def _rle_from_string(s: str) -> np.ndarray:
    """The run lengths (int64 ``[R]``) of a compressed COCO RLE string: pycocotools' ``rleFrString``, vectorised.

    Each number is a little-endian run of 5-bit chars (offset 48, bit 0x20 = "more follows", 0x10 of the
    last char = sign); from the fourth number on, each is stored as the difference to the one two back.
    """
    b = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return b
    if b.min() < 0 or b.max() > 63 or b[-1] & 0x20:
        raise ValueError("not a COCO RLE string")
    ends = np.flatnonzero((b & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(b.size) - np.repeat(starts, ends - starts + 1)  # position of each char in its number
    if k.max() > 11:
        raise ValueError("a run length is too long")
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    x -= np.where(b[ends] & 0x10, 1 << (5 * (k[ends] + 1)), 0)  # sign-extend negative deltas
    x[3::2] = np.cumsum(x[1::2])[1:]  # undo the deltas: odd runs add up from run 1, even ones from run 2
    x[4::2] = np.cumsum(x[2::2])[1:]
    return x


def runs_to_mask(runs: list[int], h: int, w: int) -> np.ndarray:
    """Uncompressed RLE run lengths (column-major, starting with a run of 0s) -> bool ``[h, w]``."""
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(w, h).T


def ann_mask(segm, h: int, w: int, where: str) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE) -> bool ``[h, w]``; ``DataError`` naming ``where`` if malformed.

    RLEs are decoded here, after checking that their runs cover the image exactly (pycocotools'
    decoder reads past the end of a malformed one); polygons are rasterised by pycocotools.
    """
    if isinstance(segm, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        from pycocotools import mask as mask_utils
        if not segm:
            raise DataError(f"{where}: empty segmentation")
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly) or len(poly) % 2:
                raise DataError(f"{where}: polygon {j} is not a flat list of x, y numbers")
            if len(poly) < 6:
                raise DataError(f"{where}: polygon {j} has {len(poly) // 2} point(s); a polygon needs at least 3")
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in segm], h, w))
        return runs_to_mask(_rle_from_string(rle["counts"].decode("ascii")), h, w)
    if not (isinstance(segm, dict) and "counts" in segm and "size" in segm):
        raise DataError(f"{where}: segmentation is neither polygons nor RLE")
    if list(segm["size"]) != [h, w]:
        raise DataError(f"{where}: RLE size {segm['size']} is not the image's [height, width] [{h}, {w}]")
    counts = segm["counts"]
    try:
        runs = _rle_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: RLE counts are not valid ({e})") from None
    runs = np.asarray(runs, np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise DataError(f"{where}: RLE runs cover {runs.sum()} pixels, the image has {h * w}")
    return runs_to_mask(runs, h, w)


def _is_bbox(bb) -> bool:
    return isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)


def _target(anns: list[dict], file: str, json_path: Path, index: dict[int, int], size_in_json):
    """The ``Target`` function of one image: its semantic mask, boxes and box labels at its own size."""
    def target(w: int, h: int) -> Target:
        if size_in_json and tuple(size_in_json) != (w, h):
            raise DataError(f"{json_path}: image {file} is {w}x{h} but the annotations say "
                            f"{size_in_json[0]}x{size_in_json[1]}")
        mask = np.zeros((h, w), np.uint8)
        boxes, labels = [], []
        for a in anns:
            where = f"{json_path}: annotation {a.get('id', '?')} (image {file})"
            if a["category_id"] not in index:
                raise DataError(f"{where}: category id {a['category_id']} is not in categories "
                                f"({', '.join(map(str, sorted(index)))})")
            m = ann_mask(a.get("segmentation"), h, w, where)
            crowd = bool(a.get("iscrowd", 0))
            mask[m] = IGNORE_INDEX if crowd else index[a["category_id"]]
            if crowd:
                continue
            bb = a.get("bbox")
            if bb is not None and not _is_bbox(bb):
                raise DataError(f"{where}: bbox {bb} is not [x, y, width, height]")
            if bb is not None and min(bb[2:]) <= 0:  # no area: listed in skipped by load_coco
                continue
            if bb is None:
                ys, xs = np.nonzero(m)
                bb = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] if xs.size else [0, 0, 0, 0]
            boxes.append([bb[0], bb[1], bb[0] + bb[2], bb[1] + bb[3]])
            labels.append(index[a["category_id"]])
        return mask, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)
    return target


def load_coco(images: str | os.PathLike, annotations: str | os.PathLike, size: int, *, name: str = "coco/train",
              classes: list[str] | None = None, grayscale: bool = False, strict: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, use_cache: bool = True) -> SegmentationDataset:
    """One split: ``images`` (folder that ``file_name`` is relative to) + ``annotations`` (instances JSON).

    -> ``SegmentationDataset`` at ``size`` with masks and boxes (float32 ``[M_i, 4]`` xyxy, int64 labels).
    ``classes`` (e.g. the train split's) must equal this file's class list when given.
    """
    images, json_path = Path(images).expanduser(), Path(annotations).expanduser()
    coco = read_coco(json_path)
    cls, index = class_list(coco)
    if classes is not None and list(classes) != cls:
        raise DataError(f"{json_path}: categories give classes {cls[1:]}, not the train split's {list(classes)[1:]}")
    by_image = {im["id"]: [] for im in coco["images"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    skipped = []

    def skip(where: str, why: str) -> None:
        if strict:
            raise DataError(f"{where}: {why}")
        skipped.append((where, why))

    for a in coco["annotations"]:
        if a["image_id"] not in by_image:
            skip(str(json_path), f"annotation {a.get('id', '?')} refers to image id {a['image_id']}, "
                                 "which is not in images")
            continue
        by_image[a["image_id"]].append(a)
        bb = a.get("bbox")
        if not a.get("iscrowd", 0) and bb is not None and _is_bbox(bb) and min(bb[2:]) <= 0:
            skip(str(json_path), f"annotation {a.get('id', '?')} (image {files[a['image_id']]}): bbox {bb} has "
                                 "no area; the box is left out (its mask is kept)")
    if not coco["images"]:
        raise DataError(f"{json_path}: no images")
    samples, first = [], {}
    for im in coco["images"]:
        if im["file_name"] in first:  # the same picture twice would count twice (and may cross splits)
            skip(str(images / im["file_name"]), f"{json_path}: image id {im['id']} lists the same file as image "
                                                f"id {first[im['file_name']]}; left out")
            continue
        first[im["file_name"]] = im["id"]
        wh = (im["width"], im["height"]) if "width" in im and "height" in im else None
        samples.append((str(images / im["file_name"]), _target(by_image[im["id"]], im["file_name"], json_path,
                                                               index, wh)))
    return build_split(samples, cls, name, size, grayscale=grayscale, strict=strict, max_pixels=max_pixels,
                       skipped=skipped, key_files=[str(json_path)], with_boxes=True, where=str(json_path),
                       use_cache=use_cache)


def find_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (images folder, annotation file)}`` of a COCO-style folder: ``annotations/{split}.json``
    (or ``instances_{split}.json``, ``instances_{split}2017.json``) with ``images/{split}``, ``{split}``,
    ``{split}2017`` or ``images``."""
    out = {}
    for s in SPLIT_NAMES:
        ann = next((root / "annotations" / f for f in (f"{s}.json", f"instances_{s}.json", f"instances_{s}2017.json")
                    if (root / "annotations" / f).is_file()), None)
        img = next((root / d for d in (f"images/{s}", s, f"{s}2017", "images") if (root / d).is_dir()), None)
        if ann is not None and img is not None:
            out[s] = (img, ann)
    return out


def load_coco_root(root: str | os.PathLike, size: int, *, name: str = "coco", grayscale: bool = False,
                   strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                   use_cache: bool = True) -> dict[str, SegmentationDataset]:
    """``{"train", ["val"], ["test"]}`` from a COCO-style folder (see ``find_splits``); one class list for all."""
    root = Path(root).expanduser()
    found = find_splits(root)
    if "train" not in found:
        raise DataError(f"{root}: expected {root}/annotations/train.json and {root}/images/train/")
    out, classes = {}, None
    for s, (img, ann) in found.items():
        out[s] = load_coco(img, ann, size, name=f"{name}/{s}", classes=classes, grayscale=grayscale, strict=strict,
                           max_pixels=max_pixels, use_cache=use_cache)
        classes = out[s].classes
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """bool ``[H, W]`` -> COCO compressed RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_coco(path: str | os.PathLike, images: list[dict], annotations: list[dict], categories: list[dict],
               info: dict | None = None) -> None:
    """Write an instances file atomically (temp file + rename): a crash leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            # dumps, not dump: dump runs the pure-Python encoder, ~5x slower on 25k annotations
            f.write(json.dumps({"info": info or {}, "images": images, "annotations": annotations,
                                "categories": categories}, separators=(",", ":")))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
