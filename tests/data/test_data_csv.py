"""The csv source: `path,label` rows, header optional, relative paths, and its errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionsmith.config import DataConfig
from visionsmith.data import BadImageError, DataError, build_datasets, synthetic


def rows_for(root: Path) -> list[tuple[str, str]]:
    """(path relative to root, class) for every image of a synthetic folder."""
    return [(str(p.relative_to(root)), p.parent.name) for p in sorted(root.rglob("*.*"))]


def write_csv(path: Path, rows, header: bool = True) -> Path:
    lines = (["path,label"] if header else []) + [f"{p},{label}" for p, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_cfg(csv, **kw) -> DataConfig:
    kw.setdefault("image_size", 16)
    return DataConfig(name="csv", csv=str(csv), **kw)


def test_csv_with_header_relative_to_its_folder(image_folder):
    csv = write_csv(image_folder / "labels.csv", rows_for(image_folder))
    ds = build_datasets(csv_cfg(csv, val_fraction=0.1, test_fraction=0.25), seed=0)
    assert ds["train"].classes == ["circle", "square", "triangle"]
    assert sum(map(len, ds.values())) == 24 and len(ds["test"]) == 6
    for split in ds.values():
        for path, label in zip(split.paths, split.labels.tolist()):
            assert Path(path).parent.name == split.classes[label] and Path(path).is_absolute()


def test_csv_without_header_with_root_and_class_order(image_folder, tmp_path):
    csv = write_csv(tmp_path / "elsewhere.csv", rows_for(image_folder), header=False)
    classes = ["triangle", "square", "circle"]
    ds = build_datasets(csv_cfg(csv, root=str(image_folder), classes=classes, val_fraction=0.0), seed=0)
    assert ds["train"].classes == classes
    tr = ds["train"]
    assert all(Path(p).parent.name == classes[y] for p, y in zip(tr.paths, tr.labels.tolist()))
    # an extra column and a Windows-style header order are fine too
    (tmp_path / "cols.csv").write_text("\ufeffid,label,path\n" + "".join(
        f"{i},{c},{image_folder / p}\n" for i, (p, c) in enumerate(rows_for(image_folder))))
    assert len(build_datasets(csv_cfg(tmp_path / "cols.csv", val_fraction=0.0), seed=0)["train"]) == 24


def test_csv_missing_file(image_folder):
    rows = rows_for(image_folder) + [("circle/gone.png", "circle")]
    csv = write_csv(image_folder / "labels.csv", rows)
    with pytest.raises(DataError, match="do not exist, e.g. line 26: circle/gone.png"):
        build_datasets(csv_cfg(csv), seed=0)


def test_csv_unknown_label(image_folder):
    csv = write_csv(image_folder / "labels.csv", rows_for(image_folder))
    with pytest.raises(DataError, match="line 2: label 'circle' is not in data.classes"):
        build_datasets(csv_cfg(csv, classes=["square", "triangle"]), seed=0)


def test_csv_other_errors(image_folder, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(csv_cfg(tmp_path / "none.csv"), seed=0)
    one = write_csv(tmp_path / "one.csv", [(str(image_folder / "circle/0000.png"), "circle")])
    with pytest.raises(DataError, match="only one class"):
        build_datasets(csv_cfg(one), seed=0)
    twice = write_csv(tmp_path / "twice.csv", [(str(image_folder / "circle/0000.png"), "circle"),
                                               (str(image_folder / "circle/0000.png"), "square")])
    with pytest.raises(DataError, match="listed again with another label"):
        build_datasets(csv_cfg(twice), seed=0)
    short = tmp_path / "short.csv"
    short.write_text("path,label\nonly_a_path.png\n")
    with pytest.raises(DataError, match="line 2: expected `path,label`"):
        build_datasets(csv_cfg(short), seed=0)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(DataError, match="has no rows"):
        build_datasets(csv_cfg(empty), seed=0)
    with pytest.raises(DataError, match="data.csv is not set"):
        build_datasets(DataConfig(name="csv"), seed=0)


def test_csv_bad_images_skipped_or_strict(image_folder):
    rows = rows_for(image_folder)
    bad = synthetic.make_bad_files(image_folder / "extra")
    rows += [(str(bad["truncated"]), "circle"), (str(bad["cmyk"]), "square")]
    csv = write_csv(image_folder / "labels.csv", rows)
    ds = build_datasets(csv_cfg(csv, val_fraction=0.0), seed=0)
    assert ds["train"].skipped == [(str(bad["truncated"]), ds["train"].skipped[0][1])]
    assert "truncated" in ds["train"].skipped[0][1]
    assert len(ds["train"]) == 25 and str(bad["cmyk"]) in ds["train"].paths
    with pytest.raises(BadImageError, match="truncated.jpg: truncated"):
        build_datasets(csv_cfg(csv, strict=True), seed=0)


def test_numeric_labels_sort_numerically(tmp_path):
    root = synthetic.make_image_folder(tmp_path / "r", classes=3, per_class=4)
    names = {"circle": "10", "square": "2", "triangle": "1"}
    csv = write_csv(tmp_path / "n.csv", [(str(root / p), names[c]) for p, c in rows_for(root)])
    ds = build_datasets(csv_cfg(csv, val_fraction=0.0), seed=0)
    assert ds["train"].classes == ["1", "2", "10"]
    assert torch.bincount(ds["train"].labels).tolist() == [4, 4, 4]
