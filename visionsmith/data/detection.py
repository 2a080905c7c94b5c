"""Detection annotations: Pascal VOC XML and YOLO txt, read into the ``SegmentationDataset``s of ``load_coco``.

Both give, per split, images uint8 ``[N, C, size, size]`` (``build_split``'s crop and resize), boxes
float32 ``[M_i, 4]`` xyxy pixels at ``size`` and int64 box labels: class index 1..K, index 0 is
``background`` (as in ``load_coco``).  Detection labels no pixels, so every mask is all
``IGNORE_INDEX`` (255, "no label here"): ``build_split`` needs a mask per image, and all-255 is
the one that claims nothing (all-0 would claim every pixel is background).

Layouts (``root`` may be the VOC year folder or one above it, e.g. ``VOCdevkit``):
    VOC:  Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{train,val,test}.txt
          (without ImageSets/Main every XML is train).  Classes: ``classes``, else root/classes.txt,
          else the 20 VOC classes.  ``difficult`` objects are kept (``keep_difficult``).
          VOC pixel coordinates are 1-based: xmin, ymin -> xmin - 1, ymin - 1 (detectron2's rule).
    YOLO: images/<split>/**/<name>.<ext> + labels/<split>/**/<name>.txt (or images/ + labels/ with no
          split folders: all train), lines ``class cx cy w h`` as fractions of the image size,
          class 0-based; classes from ``classes``, classes.txt or data.yaml ``names``.  An image
          without a label file has no objects.

Bad input (the policy of ``load_coco``): a box partly outside the image is clipped; a box with no
area (after clipping) is left out and listed in ``skipped``; an unknown class, malformed XML, a
YOLO line with the wrong number of fields or a value outside [0, 1], an image listed twice or a
label file without an image: the image (or file) is skipped and listed.  ``strict`` raises the
first of any of these as a one-line ``DataError`` naming the file (and object / line).  Images
without objects stay: they are the negatives.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .errors import DataError
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, has_image_extension
from .segmentation import (
    IGNORE_INDEX,
    SPLIT_NAMES,
    VOC_CLASSES,
    SegmentationDataset,
    Target,
    build_split,
    read_class_file,
)

BACKGROUND = "background"


class _Skips:
    """The ``skipped`` list of one split; with ``strict`` the first entry raises instead."""

    def __init__(self, strict: bool):
        self.strict, self.items = strict, []

    def add(self, where, why: str) -> None:
        if self.strict:
            raise DataError(f"{where}: {why}")
        self.items.append((str(where), why))

    def error(self, where, e: DataError) -> None:
        """A ``DataError`` that makes the file at ``where`` unusable: raised as is with ``strict``."""
        if self.strict:
            raise e
        self.items.append((str(where), str(e)))


def with_background(names: list[str]) -> list[str]:
    """Class names -> ``["background", *names]`` (unchanged when ``background`` is already first)."""
    names = [str(n) for n in names]
    return names if names and names[0] == BACKGROUND else [BACKGROUND] + names


def _fit_to_image(boxes: np.ndarray, w: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """float ``[M, 4]`` xyxy -> (clipped to [0, w] x [0, h], bool ``[M]`` "still has area")."""
    b = np.clip(boxes.reshape(-1, 4), 0, [w, h, w, h])
    return b, (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def _detection_target(boxes: np.ndarray, labels: np.ndarray, scale: bool, where: str,
                      size: tuple[int, int] | None = None):
    """The ``Target`` of one image: all-ignore mask, ``boxes`` (pixels, or fractions when ``scale``)
    clipped to the decoded image, ``labels``.  ``size`` (w, h) from the annotation must match the image."""
    def target(w: int, h: int) -> Target:
        if size and tuple(size) != (w, h):
            raise DataError(f"{where}: the annotation says the image is {size[0]}x{size[1]}, it is {w}x{h}")
        b = boxes * np.array([w, h, w, h]) if scale else boxes
        b, keep = _fit_to_image(b, w, h)  # dropped here only when the annotation gave no size to check against
        return (np.full((h, w), IGNORE_INDEX, np.uint8), b[keep].astype(np.float32),
                labels[keep].astype(np.int64))
    return target


# ---- Pascal VOC -----------------------------------------------------------------------------------------------

def read_voc_xml(path: Path, index: dict[str, int], keep_difficult: bool = True):
    """One VOC annotation file -> (boxes float64 ``[M, 4]`` 0-based xyxy pixels, labels int64 ``[M]``,
    (width, height) or None, file name or None, [why each box with no area was left out]).
    ``DataError`` naming the file (and object) for malformed XML or an unknown class."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: not valid XML ({e}); expected a Pascal VOC <annotation>") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if root.tag != "annotation":
        raise DataError(f"{path}: root element <{root.tag}>, expected a Pascal VOC <annotation>")

    def number(el, tag: str, where: str) -> float:
        text = el.findtext(tag)
        try:
            v = float(text)
        except (TypeError, ValueError):
            v = float("nan")
        if not np.isfinite(v):
            raise DataError(f"{path}: {where}: <{tag}> is {text!r}, not a number")
        return v

    size = None
    if root.find("size") is not None:
        w, h = (number(root.find("size"), t, "size") for t in ("width", "height"))
        size = (int(w), int(h)) if w > 0 and h > 0 else None  # some tools write 0: no check then
    boxes, labels, dropped = [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"object {i} ({name or 'no name'})"
        if name not in index:
            known = ", ".join(list(index)[:8]) + (", ..." if len(index) > 8 else "")
            raise DataError(f"{path}: {where}: class {name!r} is not in the class list ({known}); add it to "
                            "classes.txt or fix the name")
        if not keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{path}: {where}: no <bndbox>")
        x1, y1, x2, y2 = (number(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = np.array([x1 - 1, y1 - 1, x2, y2])
        if size:
            box = _fit_to_image(box, *size)[0][0]
        if box[2] <= box[0] or box[3] <= box[1]:
            dropped.append(f"{where}: box xmin={x1:g} ymin={y1:g} xmax={x2:g} ymax={y2:g} has no area"
                           + (f" inside the {size[0]}x{size[1]} image" if size else "") + "; left out")
            continue
        boxes.append(box)
        labels.append(index[name])
    return (np.array(boxes, np.float64).reshape(-1, 4), np.array(labels, np.int64), size,
            root.findtext("filename"), dropped)


def _voc_root(root: Path) -> Path:
    for sub in ("", "VOC2012", "VOCdevkit/VOC2012", "VOC2007", "VOCdevkit/VOC2007"):
        if (root / sub / "Annotations").is_dir():
            return root / sub
    raise DataError(f"{root}: no Annotations folder; expected a Pascal VOC folder (Annotations/<id>.xml, "
                    "JPEGImages/<id>.jpg, ImageSets/Main/{train,val,test}.txt)")


def _class_names(root: Path, classes) -> list[str]:
    """``classes``, else root/classes.txt, else the VOC classes; ``background`` first."""
    if classes is not None:
        return with_background(list(classes))
    if (root / "classes.txt").is_file():
        return with_background(read_class_file(root / "classes.txt")[0])
    return list(VOC_CLASSES)


def load_voc_detection(root: str | os.PathLike, size: int, *, classes: list[str] | None = None,
                       keep_difficult: bool = True, name: str = "voc", grayscale: bool = False,
                       strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                       use_cache: bool = True) -> dict[str, SegmentationDataset]:
    """Pascal VOC detection -> ``{"train", ["val"], ["test"]}`` (see the module docstring)."""
    root = _voc_root(Path(root).expanduser())
    cls = _class_names(root, classes)
    index = {c: k for k, c in enumerate(cls) if k > 0}
    lists = root / "ImageSets" / "Main"
    found = {s: lists / f"{s}.txt" for s in SPLIT_NAMES if (lists / f"{s}.txt").is_file()}
    if found and "train" not in found:
        raise DataError(f"{lists}: no train.txt (found {', '.join(p.name for p in found.values())})")
    if found:
        ids = {s: [(no, line.split()[0]) for no, line in enumerate(f.read_text().splitlines(), 1) if line.split()]
               for s, f in found.items()}
    else:
        ids = {"train": [(None, p.stem) for p in sorted((root / "Annotations").glob("*.xml"))]}
    seen: dict[str, str] = {}  # image id -> "split line n": an id listed twice is used once
    out = {}
    for split, entries in ids.items():
        skips, samples, xmls = _Skips(strict), [], []
        where_list = found.get(split, root / "Annotations")
        for no, i in entries:
            at = f"{split}.txt line {no}" if no else "Annotations"
            if i in seen:
                skips.add(where_list, f"{at}: image {i} is listed twice (first: {seen[i]}); the second is left out")
                continue
            seen[i] = at
            xml = root / "Annotations" / f"{i}.xml"
            if not xml.is_file():
                skips.add(xml, f"no annotation file for image {i} (listed in {at})")
                continue
            try:
                boxes, labels, wh, filename, dropped = read_voc_xml(xml, index, keep_difficult)
            except DataError as e:
                skips.error(root / "JPEGImages" / f"{i}.jpg", e)
                continue
            for why in dropped:
                skips.add(xml, why)
            img = root / "JPEGImages" / f"{i}.jpg"
            if not img.is_file() and filename and (root / "JPEGImages" / filename).is_file():
                img = root / "JPEGImages" / filename
            samples.append((str(img), _detection_target(boxes, labels, False, str(xml), wh)))
            xmls.append(str(xml))
        if not samples:
            raise DataError(f"no usable images in {where_list} ({len(skips.items)} skipped"
                            + (f", e.g. {skips.items[0][0]}: {skips.items[0][1]})" if skips.items else ")"))
        key = xmls + ([str(root / "classes.txt")] if (root / "classes.txt").is_file() else [])
        out[split] = build_split(samples, cls, f"{name}/{split}", size, grayscale=grayscale, strict=strict,
                                 max_pixels=max_pixels, skipped=skips.items, key_files=key,
                                 key_extra={"difficult": keep_difficult}, with_boxes=True, where=str(root),
                                 use_cache=use_cache)
    return out


# ---- YOLO -----------------------------------------------------------------------------------------------------

def read_yolo_classes(root: Path) -> list[str]:
    """Class names of a YOLO folder (0-based): ``classes.txt`` (one a line) or ``data.yaml`` ``names``
    (a list, or a dict {0: name, ...})."""
    if (root / "classes.txt").is_file():
        return read_class_file(root / "classes.txt")[0]
    path = root / "data.yaml"
    if not path.is_file():
        raise DataError(f"no class list for {root}: write {root / 'classes.txt'} (one name a line, line index = "
                        f"class) or {path} with names: [...]")
    import yaml
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"{path}: names keys {sorted(names)} are not the class indices 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: no names: list (or {{0: name, ...}}) of classes")
    if isinstance(data.get("nc"), int) and data["nc"] != len(names):
        raise DataError(f"{path}: nc is {data['nc']} but names lists {len(names)} classes")
    return [str(n) for n in names]


def read_yolo_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One YOLO label file -> (boxes float64 ``[M, 4]`` xyxy as fractions of the image, clipped to
    [0, 1], labels int64 ``[M]`` 0-based, [why each box with no area was left out]).
    ``DataError`` naming the file and line for a malformed line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    boxes, labels, dropped = [], [], []
    for no, line in enumerate(lines, 1):
        tok = line.split()
        if not tok:
            continue
        where = f"{path} line {no}"
        if len(tok) != 5:
            raise DataError(f"{where}: {len(tok)} fields; a YOLO box line is `class cx cy w h`"
                            + (" (polygon / segmentation labels are not read)" if len(tok) > 5 else ""))
        try:
            c, v = float(tok[0]), [float(t) for t in tok[1:]]
        except ValueError:
            raise DataError(f"{where}: {line.strip()!r} is not five numbers `class cx cy w h`") from None
        if not 0 <= c < num_classes or c != int(c):  # range first: int(nan) raises
            raise DataError(f"{where}: class {tok[0]} is not a class index 0..{num_classes - 1}")
        bad = next((n for n, x in zip(("cx", "cy", "w", "h"), v) if not 0 <= x <= 1), None)
        if bad:
            raise DataError(f"{where}: {bad} = {tok[1 + ('cx', 'cy', 'w', 'h').index(bad)]} is outside [0, 1]; "
                            "YOLO coordinates are fractions of the image width and height")
        cx, cy, w, h = v
        box, ok = _fit_to_image(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), 1.0, 1.0)
        if not ok[0]:
            dropped.append(f"line {no}: box w={tok[3]} h={tok[4]} has no area; left out")
            continue
        boxes.append(box[0])
        labels.append(int(c))
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(labels, np.int64), dropped


def _walk(folder: Path) -> list[Path]:
    """Visible files under ``folder``, sorted, recursively."""
    out = []
    for dirpath, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(files) if not f.startswith(".")]
    return out


def load_yolo(root: str | os.PathLike, size: int, *, classes: list[str] | None = None, name: str = "yolo",
              grayscale: bool = False, strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
              use_cache: bool = True) -> dict[str, SegmentationDataset]:
    """A YOLO folder -> ``{"train", ["val"], ["test"]}`` (see the module docstring)."""
    root = Path(root).expanduser()
    if (root / "images" / "train").is_dir():
        layout = {s: (root / "images" / s, root / "labels" / s) for s in SPLIT_NAMES if (root / "images" / s).is_dir()}
    elif (root / "images").is_dir():
        layout = {"train": (root / "images", root / "labels")}
    else:
        raise DataError(f"{root}: expected {root}/images/train/ and {root}/labels/train/ (YOLO layout)")
    names = read_yolo_classes(root) if classes is None else list(with_background(classes))[1:]  # YOLO's 0..K-1
    cls = [BACKGROUND] + names  # YOLO class k is class index k + 1
    class_files = [str(p) for p in (root / "classes.txt", root / "data.yaml") if p.is_file()]
    out = {}
    for split, (img_dir, lab_dir) in layout.items():
        skips, samples, label_files, stems = _Skips(strict), [], [], {}
        for img in _walk(img_dir):
            stem = str(img.relative_to(img_dir).with_suffix(""))
            if not has_image_extension(img):
                skips.add(img, f"not an image file extension; images are {' '.join(IMAGE_EXTENSIONS)}")
                continue
            if stem in stems:
                skips.add(img, f"same name as {stems[stem]}; both would take {lab_dir / stem}.txt, this one is "
                               "left out")
                continue
            stems[stem] = img
            lab = lab_dir / f"{stem}.txt"
            boxes, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
            if lab.is_file():
                try:
                    boxes, labels, dropped = read_yolo_labels(lab, len(names))
                except DataError as e:
                    skips.error(img, e)
                    continue
                for why in dropped:
                    skips.add(lab, why)
                label_files.append(str(lab))
            samples.append((str(img), _detection_target(boxes, labels + 1, True, str(lab))))
        for lab in _walk(lab_dir) if lab_dir.is_dir() else []:
            if lab.suffix == ".txt" and str(lab.relative_to(lab_dir).with_suffix("")) not in stems:
                skips.add(lab, "label file without an image of the same name")
        if not samples:
            raise DataError(f"no usable images in {img_dir} ({len(skips.items)} skipped"
                            + (f", e.g. {skips.items[0][0]}: {skips.items[0][1]})" if skips.items else ")"))
        out[split] = build_split(samples, cls, f"{name}/{split}", size, grayscale=grayscale, strict=strict,
                                 max_pixels=max_pixels, skipped=skips.items, key_files=label_files + class_files,
                                 with_boxes=True, where=str(img_dir), use_cache=use_cache)
    return out
