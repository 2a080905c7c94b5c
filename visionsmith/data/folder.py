"""An image folder: ``root/<class>/**/<image>``, or ``root/{train,val,test}/<class>/...``;
unlabelled (``load_unlabelled``, ``data.labels: false``): images anywhere under ``root``.

Class names are the sub-folder names, sorted (or ``data.classes`` in that order).  Files are
found recursively; hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are ignored;
files whose extension is not an image's are reported as skipped, never silently dropped (also
with ``data.strict``, which raises only for files with an image extension that fail to decode).
"""
from __future__ import annotations

import os
from pathlib import Path

from .dataset import ImageDataset
from .errors import DataError
from .files import dataset_from_files
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, has_image_extension

SPLIT_NAMES = ("train", "val", "test")


def _visible_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def split_layout(root: str | os.PathLike) -> dict[str, Path] | None:
    """``{"train": root/train, "test": root/test, ...}`` when root holds only split folders
    (at least ``train``), else None (root holds class folders)."""
    root = Path(root)
    dirs = _visible_dirs(root)
    if "train" in dirs and set(dirs) <= set(SPLIT_NAMES):
        return {s: root / s for s in SPLIT_NAMES if s in dirs}
    return None


def check_root(root: str | os.PathLike | None) -> Path:
    if not root:
        raise DataError("data.root is not set; point it at a folder of class folders (root/<class>/<image>)")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    return root


def walk_files(top: Path, seen_dirs: set[str], seen_files: set[str], skipped: list[tuple[str, str]],
               root: Path) -> list[str]:
    """Every visible file under ``top`` (links followed, hidden names skipped), in a stable order, never twice.

    Links are followed (users link class folders in from elsewhere), but a directory is walked at most once
    (``seen_dirs``: real paths, shared by every class of one scan, pre-seeded with the class folders) and never
    one that holds ``root`` (``a/up -> ..`` would walk every class again under ``a``); a file reached twice
    (two links to it) counts once (``seen_files``).  What is left out goes to ``skipped`` with the reason."""
    root_real = os.path.realpath(root)
    out: list[str] = []
    for dirpath, subdirs, files in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(x for x in subdirs if not x.startswith(".")):  # prune hidden, walk in order
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
                skipped.append((full, f"a link to {real}, which holds the data root: not followed (it would count "
                                      "every image again)"))
            elif real in seen_dirs:
                skipped.append((full, f"a link to {real}, which is already read: not followed"))
            else:
                seen_dirs.add(real)
                keep.append(d)
        subdirs[:] = keep
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = os.path.join(dirpath, f)
            real = os.path.realpath(p)
            if real in seen_files:
                skipped.append((p, f"the same file as one already read ({real})"))
                continue
            seen_files.add(real)
            out.append(p)
    return out


def scan(root: Path, classes: list[str] | None = None,
         allow_missing: bool = False) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, str]]]:
    """Find the files of ``root/<class>/...``.  -> (classes, [(path, label)], skipped).

    ``classes`` fixes the class list (a test folder must use the train folder's classes); a
    folder not in it is a ``DataError``; a class without a folder is one unless ``allow_missing``.
    """
    dirs = _visible_dirs(root)
    loose = sorted(e.path for e in os.scandir(root) if e.is_file() and not e.name.startswith("."))
    if not dirs:
        n_img = sum(map(has_image_extension, loose))
        hint = (f" ({n_img} images lie directly in it: move them into one folder per class, or set "
                f"data.labels=false to pretrain on them without labels, method=simclr or mim)") if n_img else ""
        raise DataError(f"no class folders in {root}{hint}; expected {root}/<class>/<image>.png")
    if classes is None:
        classes = dirs
    else:
        extra = [d for d in dirs if d not in classes]
        if extra:
            raise DataError(f"{root} has folders that are not classes: {', '.join(extra)}; "
                            f"classes are {', '.join(classes)}")
        missing = [c for c in classes if c not in dirs]
        if missing and not allow_missing:
            raise DataError(f"class {missing[0]!r} has no folder {root / missing[0]}")
    skipped = [(p, "not inside a class folder") for p in loose]
    items: list[tuple[str, int]] = []
    seen_dirs = {os.path.realpath(root / name) for name in classes if name in dirs}  # a link to a class: not again
    seen_files: set[str] = set()
    for label, name in enumerate(classes):
        if name not in dirs:
            continue
        for p in walk_files(root / name, seen_dirs, seen_files, skipped, root):
            if has_image_extension(p):
                items.append((p, label))
            else:
                skipped.append((p, f"not an image file extension ({Path(p).suffix or 'none'}); "
                                   f"images are {' '.join(IMAGE_EXTENSIONS)}"))
    return list(classes), items, skipped


def load(root: str | os.PathLike, size: int, grayscale: bool = False, strict: bool = False,
         classes: list[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, ImageDataset]:
    """``{"train": ..., ["val": ..., "test": ...]}`` decoded at ``size``: images uint8 ``[N, C, size, size]``.

    A plain ``root/<class>/`` tree gives only "train"; ``root/train`` + ``root/test`` (+ ``root/val``)
    give those splits, with the classes taken from ``root/train``.
    """
    root = check_root(root)
    layout = split_layout(root) or {"train": root}
    out = {}
    for split, folder in layout.items():
        is_train = split == "train"
        cls, items, skipped = scan(folder, classes, allow_missing=not is_train)
        if is_train:
            classes = cls
            if len(classes) < 2:
                raise DataError(f"only one class folder ({classes[0]!r}) in {folder}; a classifier needs at "
                                f"least two: add a folder per class")
        if not items:
            raise DataError(f"no image files in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)} "
                            f"inside {folder}/<class>/)")
        out[split] = dataset_from_files(items, classes, f"folder/{split}", size, grayscale, strict, skipped,
                                        require_all_classes=is_train, where=str(folder), max_pixels=max_pixels)
    return out


UNLABELLED = "unlabelled"  # the one pseudo-class of unlabelled images


def load_unlabelled(root: str | os.PathLike, size: int, grayscale: bool = False, strict: bool = False,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, ImageDataset]:
    """``{"train": ...}``: every image anywhere under ``root`` (under ``root/train`` when root holds
    split folders: test images are not for pretraining), as one pseudo-class ``"unlabelled"``.

    A folder without a single image file is a ``DataError`` naming it, raised before any training.
    """
    root = check_root(root)
    layout = split_layout(root)
    where = layout["train"] if layout else root
    items: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    for p in walk_files(where, {os.path.realpath(where)}, set(), skipped, where):
        if has_image_extension(p):
            items.append((p, 0))
        else:
            skipped.append((p, f"not an image file extension ({Path(p).suffix or 'none'}); "
                               f"images are {' '.join(IMAGE_EXTENSIONS)}"))
    if not items:
        other = f"; {len(skipped)} other file(s) there, e.g. {skipped[0][0]}" if skipped else ""
        raise DataError(f"no image files in {where} or its sub-folders (looked for {' '.join(IMAGE_EXTENSIONS)})"
                        f"{other}: self-supervised pretraining needs a folder of images")
    return {"train": dataset_from_files(items, [UNLABELLED], "folder/train", size, grayscale, strict, skipped,
                                        where=str(where), max_pixels=max_pixels)}


def list_image_inputs(inputs) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the image files to read, in order: predict's and enhance's inputs; the entries of the given folders
    named like images that are not files: a link to nowhere, a FIFO, a folder called x.png, with the
    reason).  A path given by name is kept as it is: ``load_image`` says what is wrong with it."""
    import stat

    files, odd = [], []
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            files.append(p)
            continue
        for q in sorted(p.rglob("*")):
            if q.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if q.is_file():
                files.append(q)
            elif q.is_dir():
                odd.append((q, "a folder named like an image file"))
            elif not q.exists():
                odd.append((q, "a link to nowhere (broken symbolic link)"))
            else:
                mode = q.stat().st_mode
                odd.append((q, "a FIFO, not an image file" if stat.S_ISFIFO(mode) else "not a regular file"))
    return files, odd
