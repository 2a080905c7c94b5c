"""A CSV of ``path,label`` rows.  The header is optional; relative paths are resolved against
``data.root`` when set, else against the CSV's own folder (so a dataset folder can be moved)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from .dataset import ImageDataset
from .errors import DataError
from .files import dataset_from_files
from .images import DEFAULT_MAX_PIXELS

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "target", "category")


def _label_key(label: str):
    # "2" before "10": numeric labels sort as numbers, names alphabetically after them
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def read_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """``[(line_number, path, label), ...]`` from the CSV; the header row (if any) is left out."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            rows = [(i, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read data.csv {csv_path}: {e}") from None
    rows = [(i, r) for i, r in rows if any(r)]  # blank lines
    if not rows:
        raise DataError(f"data.csv {csv_path} has no rows; expected `path,label` lines")
    path_col, label_col = 0, 1
    head = [c.lower() for c in rows[0][1]]
    if any(c in PATH_COLUMNS for c in head) and any(c in LABEL_COLUMNS for c in head):
        path_col = next(i for i, c in enumerate(head) if c in PATH_COLUMNS)
        label_col = next(i for i, c in enumerate(head) if c in LABEL_COLUMNS)
        rows = rows[1:]
    out = []
    for line, r in rows:
        if len(r) <= max(path_col, label_col) or not r[path_col] or not r[label_col]:
            raise DataError(f"{csv_path} line {line}: expected `path,label`, got {','.join(r)!r}")
        out.append((line, r[path_col], r[label_col]))
    if not out:
        raise DataError(f"data.csv {csv_path} has a header but no rows")
    return out


def load(csv_path: str | os.PathLike, size: int, root: str | None = None, classes: list[str] | None = None,
         grayscale: bool = False, strict: bool = False,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageDataset:
    """The CSV's images decoded at ``size``: images uint8 ``[N, C, size, size]``, labels by ``classes``.

    ``classes`` default: the sorted labels seen.  A missing file, a label not in ``classes``, a
    path listed twice with two labels, or fewer than two classes is a ``DataError``.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"data.csv {csv_path} does not exist")
    base = Path(root).expanduser() if root else csv_path.parent
    rows = read_rows(csv_path)
    if classes is None:
        classes = sorted({label for _, _, label in rows}, key=_label_key)
    index = {c: i for i, c in enumerate(classes)}
    items: dict[str, int] = {}
    missing = []
    for line, path, label in rows:
        if label not in index:
            raise DataError(f"{csv_path} line {line}: label {label!r} is not in data.classes "
                            f"({', '.join(classes)}); fix the row or add the class")
        p = os.path.normpath(base / path)
        if not os.path.exists(p):
            missing.append((line, path))
            continue
        if items.setdefault(p, index[label]) != index[label]:
            raise DataError(f"{csv_path} line {line}: {path} is listed again with another label ({label!r})")
    if missing:
        line, path = missing[0]
        raise DataError(f"{csv_path}: {len(missing)} listed file(s) do not exist, e.g. line {line}: {path} "
                        f"(relative paths are resolved against {base}; set data.root to change that)")
    if len(classes) < 2:
        raise DataError(f"{csv_path}: only one class ({classes[0]!r}); a classifier needs at least two")
    return dataset_from_files(list(items.items()), list(classes), "csv", size, grayscale, strict,
                              where=str(csv_path), max_pixels=max_pixels)
