"""The folder source on real files: happy path, bad files skipped or raised, errors, the cache."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from visionsmith.config import DataConfig
from visionsmith.data import BadImageError, DataError, build_datasets, cache, synthetic


def folder_cfg(root, **kw) -> DataConfig:
    kw.setdefault("image_size", 16)
    return DataConfig(name="folder", root=str(root), **kw)


def all_paths(ds) -> list[str]:
    return [p for split in ds.values() for p in split.paths]


def test_happy_path(image_folder):
    ds = build_datasets(folder_cfg(image_folder, val_fraction=0.17, test_fraction=0.25), seed=0)
    tr, va, te = ds["train"], ds["val"], ds["test"]
    assert tr.classes == ["circle", "square", "triangle"]  # sorted folder names
    assert (len(tr), len(va), len(te)) == (15, 3, 6)
    assert te.class_counts().tolist() == [2, 2, 2] and va.class_counts().tolist() == [1, 1, 1]
    for split in ds.values():
        assert split.images.shape[1:] == (3, 16, 16) and split.images.dtype == torch.uint8
        for path, label in zip(split.paths, split.labels.tolist()):
            assert Path(path).parent.name == split.classes[label]
        assert split.skipped == []
    assert len(set(all_paths(ds))) == 24
    again = build_datasets(folder_cfg(image_folder, val_fraction=0.17, test_fraction=0.25), seed=0)
    assert again["val"].paths == va.paths and again["test"].paths == te.paths
    # test_fraction 0 and no test folder: an empty test split, still with the right shape
    ds0 = build_datasets(folder_cfg(image_folder, test_fraction=0.0), seed=0)
    assert len(ds0["test"]) == 0 and ds0["test"].images.shape[1:] == (3, 16, 16)


def test_grayscale_and_cache_size(image_folder):
    ds = build_datasets(folder_cfg(image_folder, grayscale=True, cache_size=20, image_size=12), seed=0)
    assert ds["train"].images.shape[1:] == (1, 20, 20)


def test_bad_files_skipped_with_reasons(image_folder):
    bad = synthetic.make_bad_files(image_folder / "circle")
    ds = build_datasets(folder_cfg(image_folder, val_fraction=0.0), seed=0, max_pixels=1_000_000)
    skipped = dict(ds["train"].skipped + ds["val"].skipped + ds["test"].skipped)
    expected = {str(bad[c]) for c in synthetic.BAD_CASES} | {str(bad[synthetic.NOT_IMAGE_EXTENSION])}
    assert set(skipped) == expected
    assert "zero-byte" in skipped[str(bad["zero_byte"])]
    assert "truncated" in skipped[str(bad["truncated"])]
    assert "not an image" in skipped[str(bad["not_image"])]
    assert "decompression bomb" in skipped[str(bad["bomb"])]
    assert "extension" in skipped[str(bad["text_file"])]
    kept = set(all_paths(ds))
    assert {str(bad[c]) for c in synthetic.ODD_CASES} <= kept  # odd but valid files are used
    assert len(ds["train"]) == 24 + len(synthetic.ODD_CASES)


def test_strict_raises_on_first_bad_file_even_from_cache(image_folder):
    bad = synthetic.make_bad_files(image_folder / "square")
    bad_paths = {str(bad[c]) for c in synthetic.BAD_CASES}
    with pytest.raises(BadImageError) as err:
        build_datasets(folder_cfg(image_folder, strict=True), seed=0, max_pixels=1_000_000)
    assert err.value.path in bad_paths and err.value.path in str(err.value)
    build_datasets(folder_cfg(image_folder), seed=0, max_pixels=1_000_000)  # writes the cache
    hits = cache.stats["cache_hits"]
    with pytest.raises(BadImageError) as err:
        build_datasets(folder_cfg(image_folder, strict=True), seed=0, max_pixels=1_000_000)
    assert cache.stats["cache_hits"] == hits + 1 and err.value.path in bad_paths


def test_hidden_loose_and_uppercase_files(image_folder):
    (image_folder / "circle" / ".DS_Store").write_bytes(b"\x00junk")
    (image_folder / "circle" / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(image_folder / "circle" / ".hidden" / "x.png")
    Image.new("RGB", (8, 8)).save(image_folder / "circle" / "UPPER.PNG")
    (image_folder / "circle" / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(image_folder / "circle" / "nested" / "deep.JPeG", "JPEG")
    Image.new("RGB", (8, 8)).save(image_folder / "loose.png")
    ds = build_datasets(folder_cfg(image_folder, val_fraction=0.0), seed=0)
    paths = all_paths(ds)
    assert str(image_folder / "circle" / "UPPER.PNG") in paths
    assert str(image_folder / "circle" / "nested" / "deep.JPeG") in paths
    assert not any("/." in p for p in paths + [p for p, _ in ds["train"].skipped])
    assert ds["train"].skipped == [(str(image_folder / "loose.png"), "not inside a class folder")]


def test_split_folders_layout(tmp_path):
    root = tmp_path / "ds"
    synthetic.make_image_folder(root / "train", classes=3, per_class=6, seed=1)
    synthetic.make_image_folder(root / "test", classes=3, per_class=2, seed=2)
    ds = build_datasets(folder_cfg(root, val_fraction=0.0), seed=0)
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"])) == (18, 0, 6)
    assert all("/test/" in p for p in ds["test"].paths)
    synthetic.make_image_folder(root / "val", classes=2, per_class=2, seed=3)  # val may lack a class
    ds = build_datasets(folder_cfg(root), seed=0)
    assert (len(ds["train"]), len(ds["val"]), len(ds["test"])) == (18, 4, 6)
    (root / "test" / "unicorn").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "unicorn" / "u.png")
    with pytest.raises(DataError, match="not classes: unicorn"):
        build_datasets(folder_cfg(root), seed=0)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(folder_cfg(tmp_path / "nope"), seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"no class folders in {empty}"):
        build_datasets(folder_cfg(empty), seed=0)
    Image.new("RGB", (8, 8)).save(empty / "a.png")
    with pytest.raises(DataError, match="move them into one folder per class"):
        build_datasets(folder_cfg(empty), seed=0)
    no_images = tmp_path / "no_images"
    (no_images / "a").mkdir(parents=True)
    (no_images / "b").mkdir()
    (no_images / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files in"):
        build_datasets(folder_cfg(no_images), seed=0)
    one = synthetic.make_image_folder(tmp_path / "one", classes=1, per_class=4)
    with pytest.raises(DataError, match="only one class folder \\('circle'\\)"):
        build_datasets(folder_cfg(one), seed=0)


def test_class_with_only_bad_files_or_too_few_images(tmp_path):
    root = synthetic.make_image_folder(tmp_path / "r", classes=2, per_class=4)
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="class 'broken' has no usable images.*zero-byte"):
        build_datasets(folder_cfg(root), seed=0)
    (root / "broken" / "a.png").unlink()
    Image.new("RGB", (8, 8)).save(root / "broken" / "only.png")
    with pytest.raises(DataError, match="class 'broken'.*1 image"):
        build_datasets(folder_cfg(root, val_fraction=0.1), seed=0)
    assert len(build_datasets(folder_cfg(root, val_fraction=0.0), seed=0)["train"]) == 9


def test_cache_used_on_second_build(image_folder, vs_home):
    cfg = folder_cfg(image_folder)
    before = dict(cache.stats)
    first = build_datasets(cfg, seed=0)
    assert cache.stats["decoded"] - before["decoded"] == 24
    files = list((vs_home / "cache").glob("images-*.pt"))
    assert len(files) == 1 and not list((vs_home / "cache").glob("*.tmp"))  # written atomically
    mtime = files[0].stat().st_mtime_ns
    second = build_datasets(cfg, seed=0)
    assert cache.stats["decoded"] - before["decoded"] == 24  # nothing decoded again
    assert cache.stats["cache_hits"] - before["cache_hits"] == 1
    assert files[0].stat().st_mtime_ns == mtime
    for k in first:
        assert torch.equal(first[k].images, second[k].images) and first[k].paths == second[k].paths
    # an edited file changes the key: a fresh decode, a second cache file
    p = image_folder / "circle" / "0000.png"
    Image.new("RGB", (24, 24), (1, 2, 3)).save(p)
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10 ** 9))
    build_datasets(cfg, seed=0)
    assert cache.stats["decoded"] - before["decoded"] == 48
    assert len(list((vs_home / "cache").glob("images-*.pt"))) == 2
    # another size is another key; a damaged cache file is ignored and rewritten
    for f in (vs_home / "cache").glob("images-*.pt"):
        f.write_bytes(b"garbage")
    third = build_datasets(cfg, seed=0)
    assert cache.stats["decoded"] - before["decoded"] == 72
    assert third["train"].images.shape[1:] == (3, 16, 16)
    blob = torch.load(max((vs_home / "cache").glob("images-*.pt"), key=os.path.getmtime), weights_only=True)
    assert blob["images"].shape == (24, 3, 16, 16)


def many_images(root: Path) -> Path:
    """202 tiny PNGs in two classes: above the 200-file progress-bar threshold."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(101):
            Image.new("L", (8, 8), i if c == "a" else 255 - i).save(root / c / f"{i}.png")
    return root


def test_progress_bar_for_many_files(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tests/conftest.py silences tqdm by default
    ds = build_datasets(folder_cfg(many_images(tmp_path / "many"), grayscale=True, image_size=8), seed=0)
    assert sum(len(s) for s in ds.values()) == 202
    err = capfd.readouterr().err
    assert "decoding folder/train" in err and "202/202" in err


def test_progress_bar_honours_tqdm_disable(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    build_datasets(folder_cfg(many_images(tmp_path / "many"), grayscale=True, image_size=8), seed=0)
    assert "decoding" not in capfd.readouterr().err
