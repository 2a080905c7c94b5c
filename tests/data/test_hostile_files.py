"""Hostile file systems: links that loop back up or into another class, a file reached twice, names that
are not valid UTF-8, FIFOs, links to devices, huge sparse files -- never silent corruption, a hang or a crash."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from PIL import Image

from visionsmith.config import DataConfig
from visionsmith.data import BadImageError, build_datasets, load_image, synthetic
from visionsmith.data.images import printable_path


def _cfg(root) -> DataConfig:
    return DataConfig(name="folder", root=str(root), image_size=16, val_fraction=0.0)


def test_a_link_back_up_is_not_followed_and_nothing_counts_twice(tmp_path):
    root = synthetic.make_image_folder(tmp_path / "d", classes=2, per_class=10, size=16, seed=0)
    a, b = sorted(p for p in root.iterdir())
    os.symlink("..", a / "up")                     # the case that turned 20 images into 902
    os.symlink(os.path.abspath(b), a / "other")    # a link into another class
    first = sorted(a.iterdir())[0]
    os.symlink(first.name, a / ("again" + first.suffix))  # the same file under two names
    ds = build_datasets(_cfg(root), seed=0)["train"]
    assert len(ds) == 20 and ds.class_counts().tolist() == [10, 10]
    for path, label in zip(ds.paths, ds.labels.tolist()):  # every image keeps its own class
        assert Path(os.path.realpath(path)).parent.name == ds.classes[label]
    why = {Path(p).name: r for p, r in ds.skipped}
    assert "holds the data root" in why["up"] and "already read" in why["other"]
    assert "the same file as one already read" in why["again" + first.suffix]


def test_a_name_that_is_not_utf8_loads_and_prints(tmp_path):
    root = synthetic.make_image_folder(tmp_path / "d", classes=2, per_class=4, size=16, seed=1)
    cls = sorted(root.iterdir())[0]
    src = sorted(cls.iterdir())[0]
    odd = os.fsencode(cls) + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not UTF-8
    os.rename(os.fsencode(src), odd)
    ds = build_datasets(_cfg(root), seed=0)["train"]
    assert len(ds) == 8
    name = next(p for p in ds.paths if "caf" in p)
    shown = printable_path(name)
    assert shown.endswith("caf\ufffd-\ufffd.png") and shown.encode("utf-8")  # no lone surrogates left


def test_a_fifo_a_device_and_a_huge_sparse_file_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    dev = tmp_path / "zero.png"
    os.symlink("/dev/zero", dev)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(3 * 2**30)  # 3 GB, sparse: no disk used
    results = {}

    def run():  # a FIFO would block a plain read forever: run in a thread and give it a deadline
        for p in (fifo, dev, huge):
            try:
                load_image(p, max_pixels=10_000_000)
            except BadImageError as e:
                results[p.name] = e.reason
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "load_image blocked"
    assert "FIFO" in results["pipe.png"] and "device" in results["zero.png"]
    assert "more than any image of at most 10000000 pixels" in results["huge.jpg"]


def test_predict_lists_odd_folder_entries_and_answers_the_good_files(tmp_path):
    import visionsmith
    run = visionsmith.train(Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml",
                            ["train.max_steps=2", "train.threads=1"], out=tmp_path / "run", report=False)
    d = tmp_path / "in"
    d.mkdir()
    Image.new("L", (8, 8), 200).save(d / "good.png")
    os.symlink(d / "missing.png", d / "dangling.png")
    os.mkfifo(d / "pipe.png")
    (d / "folder.png").mkdir()
    (tmp_path / "also.jpg").write_bytes(b"")  # given by name: its own reason
    res = visionsmith.predict(run, [d, tmp_path / "also.jpg"])
    assert [Path(p.path).name for p in res.predictions] == ["good.png"]
    why = {Path(p).name: r for p, r in res.bad}
    assert set(why) == {"dangling.png", "pipe.png", "folder.png", "also.jpg"}
    assert "link to nowhere" in why["dangling.png"] and "FIFO" in why["pipe.png"] and "folder" in why["folder.png"]


def test_test_images_that_are_also_training_images_are_reported(tmp_path, capsys):
    """A training image copied into test (another name, another format) is found by its pixels, named in
    run.json and the report, and warned about; a clean split reports 0."""
    import json
    import shutil

    import visionsmith
    from visionsmith.data.leaks import find_leaks
    root = synthetic.make_image_folder(tmp_path / "d", classes=2, per_class=12, size=16, seed=2)
    clean = find_leaks(build_datasets(DataConfig(name="folder", root=str(root), image_size=16, test_fraction=0.25), 0))
    assert clean["test"] == {"count": 0, "of": 6, "examples": []} and clean["val"]["count"] == 0
    tree = tmp_path / "split"  # tree/train/<class>/: 10 images, tree/test/<class>/: 2 images
    for c in sorted(root.iterdir()):
        for split, files in (("train", sorted(c.iterdir())[:10]), ("test", sorted(c.iterdir())[10:])):
            (tree / split / c.name).mkdir(parents=True)
            for f in files:
                shutil.copy(f, tree / split / c.name / f.name)
    cls = sorted((tree / "train").iterdir())[0]
    leaked = sorted(cls.iterdir())[3]
    Image.open(leaked).save(tree / "test" / cls.name / "renamed-copy.bmp")
    res = visionsmith.train(None, overrides=["model.name=simple_cnn", "data.name=folder", f"data.root={tree}",
                                             "data.image_size=16", "data.val_fraction=0", "train.max_steps=2",
                                             "train.batch_size=4", "train.threads=1", "train.ema=false"],
                            out=tmp_path / "run", report=True)
    leak = json.loads((res / "run.json").read_text())["data"]["leaks"]["test"]
    assert leak["count"] == 1 and leak["of"] == 5
    assert leak["examples"][0]["image"].endswith("renamed-copy.bmp") and leak["examples"][0]["train"] == str(leaked)
    assert "1 of 5 test images have the same pixels as a training image" in capsys.readouterr().out
    html = (res / "report.html").read_text()
    assert "1 of 5 test images are also training images" in html and "renamed-copy.bmp" in html
