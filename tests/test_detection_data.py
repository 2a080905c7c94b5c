"""Detection data on real files: Pascal VOC XML, YOLO txt, the COCO checks for boxes, and bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from visionsmith.data import DataError
from visionsmith.data.coco import load_coco
from visionsmith.data.detection import load_voc_detection, load_yolo
from visionsmith.data.segmentation import IGNORE_INDEX, VOC_CLASSES


@pytest.fixture(autouse=True)
def vs_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSMITH_HOME", str(tmp_path / "vs_home"))  # a private decode cache per test


def save_image(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(w * h)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


# ---- Pascal VOC -----------------------------------------------------------------------------------------------

def voc_xml(objects, w=40, h=30) -> str:
    """objects: [(name, xmin, ymin, xmax, ymax[, difficult])] -> a VOC annotation."""
    objs = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult><bndbox>"
        f"<xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects)
    return f"<annotation><filename>x.jpg</filename><size><width>{w}</width><height>{h}</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def write_voc(root, images: dict, splits: dict | None = None):
    """images: {id: (objects, w, h) or raw XML text}; splits: {split: [ids]} -> ImageSets/Main."""
    for i, spec in images.items():
        objects, w, h = spec if isinstance(spec, tuple) else ([], 40, 30)
        save_image(root / "JPEGImages" / f"{i}.jpg", w, h)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{i}.xml").write_text(spec if isinstance(spec, str) else voc_xml(objects, w, h))
    for split, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_voc_boxes_at_size(tmp_path):
    write_voc(tmp_path / "VOCdevkit" / "VOC2007", {
        "000001": ([("dog", 11, 6, 30, 25), ("cat", 1, 1, 50, 10, 1)], 40, 30),  # cat: difficult, past the edge
        "000002": ([("person", 21, 11, 60, 50)], 80, 60),
        "000003": ([], 40, 30),                                                   # no objects: a negative
    }, {"train": ["000001", "000003"], "val": ["000002"]})
    out = load_voc_detection(tmp_path, 30)  # the folder above VOCdevkit/VOC2007 is found
    tr, va = out["train"], out["val"]
    assert set(out) == {"train", "val"} and tr.name == "voc/train" and tr.classes == VOC_CLASSES
    assert tr.images.shape == (2, 3, 30, 30) and (tr.masks == IGNORE_INDEX).all() and not tr.skipped
    # 40x30 -> centre crop x 5..35, no scaling; VOC's 1-based xmin/ymin -> 0-based; the cat is clipped to x 40
    assert tr.boxes[0].tolist() == [[5, 5, 25, 25], [0, 0, 30, 10]]
    assert tr.box_labels[0].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")]
    assert tr.boxes[1].shape == (0, 4) and tr.box_labels[1].dtype == torch.int64
    # 80x60 -> crop x 10..70, scale 0.5
    assert va.boxes[0].tolist() == [[5, 5, 25, 25]] and va.box_labels[0].tolist() == [15]
    easy = load_voc_detection(tmp_path, 30, keep_difficult=False)["train"]
    assert easy.boxes[0].tolist() == [[5, 5, 25, 25]]
    again = load_voc_detection(tmp_path, 30)["train"]  # from the cache: the same
    assert torch.equal(again.images, tr.images) and again.boxes[0].tolist() == tr.boxes[0].tolist()


def test_voc_classes_file_and_no_image_sets(tmp_path):
    root = write_voc(tmp_path, {"a": ([("widget", 1, 1, 10, 10)], 40, 30), "b": ([("gadget", 11, 1, 20, 10)], 40, 30)})
    (root / "classes.txt").write_text("widget\ngadget\n")
    out = load_voc_detection(root, 30)
    assert list(out) == ["train"] and out["train"].classes == ["background", "widget", "gadget"]
    assert [b.tolist() for b in out["train"].box_labels] == [[1], [2]]
    out = load_voc_detection(root, 30, classes=["background", "gadget", "widget"])
    assert [b.tolist() for b in out["train"].box_labels] == [[2], [1]]


@pytest.mark.parametrize("case, where, message", [
    ("malformed", "b.jpg", "b.xml: not valid XML"),
    ("unknown_class", "b.jpg", "b.xml: object 0 (unicorn): class 'unicorn' is not in the class list"),
    ("not_a_number", "b.jpg", "b.xml: object 0 (dog): <xmax> is 'ten', not a number"),
    ("wrong_size", "b.jpg", "b.xml: the annotation says the image is 64x64, it is 40x30"),
    ("no_xml", "c.xml", "no annotation file for image c (listed in train.txt line 3)"),
    ("listed_twice", "train.txt", "train.txt line 3: image a is listed twice (first: train.txt line 1)"),
])
def test_voc_bad_images_are_skipped_and_listed(tmp_path, case, where, message):
    bad = {"malformed": "<annotation><object><name>dog</name>", "unknown_class": voc_xml([("unicorn", 1, 1, 5, 5)]),
           "not_a_number": voc_xml([("dog", 1, 1, "ten", 5)]), "wrong_size": voc_xml([("dog", 1, 1, 5, 5)], 64, 64)}
    root = write_voc(tmp_path, {"a": ([("dog", 1, 1, 9, 9)], 40, 30), "b": bad.get(case, voc_xml([]))},
                     {"train": ["a", "b", {"no_xml": "c", "listed_twice": "a"}.get(case, "b")]})
    if case not in ("no_xml", "listed_twice"):
        (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    ds = load_voc_detection(root, 30)["train"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith(where) and message in ds.skipped[0][1]
    assert len(ds) == (1 if case in bad else 2)
    with pytest.raises(DataError, match=re.escape(message)):
        load_voc_detection(root, 30, strict=True)


def test_voc_boxes_without_area_are_left_out_and_listed(tmp_path):
    root = write_voc(tmp_path, {"a": ([("dog", 10, 1, 9, 9), ("cat", 50, 1, 60, 9), ("cow", 1, 1, 9, 9)], 40, 30),
                                "b": ([], 40, 30)}, {"train": ["a"], "val": ["a", "b"]})
    out = load_voc_detection(root, 40)
    ds = out["train"]
    assert len(ds) == 1 and ds.box_labels[0].tolist() == [VOC_CLASSES.index("cow")]
    assert [w for w, _ in ds.skipped] == [str(root / "Annotations" / "a.xml")] * 2
    assert "object 0 (dog): box xmin=10 ymin=1 xmax=9 ymax=9 has no area inside the 40x30 image" in ds.skipped[0][1]
    assert "object 1 (cat)" in ds.skipped[1][1]
    # an image in two splits is used in the first only
    assert len(out["val"]) == 1 and "image a is listed twice (first: train.txt line 1)" in out["val"].skipped[0][1]
    with pytest.raises(DataError, match=re.escape("a.xml: object 0 (dog): box")):
        load_voc_detection(root, 40, strict=True)


def test_voc_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no Annotations folder"):
        load_voc_detection(tmp_path, 30)
    write_voc(tmp_path, {"a": "not xml"})
    with pytest.raises(DataError, match=r"no usable images .*not valid XML"):
        load_voc_detection(tmp_path, 30)


# ---- YOLO -----------------------------------------------------------------------------------------------------

def write_yolo(root, labels: dict, split="train", classes="cat\ndog\n", w=40, h=30, ext=".jpg"):
    """labels: {name: label file text or None (no label file)}."""
    for name, text in labels.items():
        save_image(root / "images" / split / f"{name}{ext}", w, h)
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text(text)
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_yolo_boxes_at_size(tmp_path):
    root = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n1 0.9 0.5 0.4 0.2\n", "b": None, "c": ""})
    write_yolo(tmp_path, {"d": "1 0.25 0.5 0.5 1.0\n"}, split="val", w=80, h=60)
    out = load_yolo(root, 30)
    tr = out["train"]
    assert set(out) == {"train", "val"} and tr.classes == ["background", "cat", "dog"] and tr.name == "yolo/train"
    assert (tr.masks == IGNORE_INDEX).all() and not tr.skipped and len(tr) == 3
    # a: (cx 20, cy 15, w 20, h 15) px -> crop x 5..35; the dog spans x 28..44 -> clipped at 40 -> 23..30
    np.testing.assert_allclose(tr.boxes[0].numpy(), [[5, 7.5, 25, 22.5], [23, 12, 30, 18]], atol=1e-5)
    assert tr.box_labels[0].tolist() == [1, 2]
    assert tr.boxes[1].shape == (0, 4) and tr.boxes[2].shape == (0, 4)  # no label file / empty: negatives
    # 80x60, x 0..40 -> crop x 10..70 -> 0..30 at scale 0.5 -> 0..15
    np.testing.assert_allclose(out["val"].boxes[0].numpy(), [[0, 0, 15, 30]], atol=1e-5)


@pytest.mark.parametrize("yaml_text", ["names: [cat, dog]\nnc: 2\n", "names:\n  0: cat\n  1: dog\n"])
def test_yolo_classes_from_data_yaml(tmp_path, yaml_text):
    root = write_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"}, classes=None)
    (root / "data.yaml").write_text(yaml_text)
    ds = load_yolo(root, 30)["train"]
    assert ds.classes == ["background", "cat", "dog"] and ds.box_labels[0].tolist() == [2]
    ds = load_yolo(root, 30, classes=["background", "x", "y", "z"])["train"]  # a given list wins
    assert ds.classes == ["background", "x", "y", "z"]


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "a.txt line 2: 4 fields; a YOLO box line is `class cx cy w h`"),
    ("0 0.1 0.1 0.2 0.1 0.2 0.3", "a.txt line 2: 7 fields; a YOLO box line is `class cx cy w h` (polygon"),
    ("0 1.5 0.5 0.2 0.2", "a.txt line 2: cx = 1.5 is outside [0, 1]"),
    ("0 0.5 0.5 0.2 -0.1", "a.txt line 2: h = -0.1 is outside [0, 1]"),
    ("5 0.5 0.5 0.2 0.2", "a.txt line 2: class 5 is not a class index 0..1"),
    ("0.5 0.5 0.5 0.2 0.2", "a.txt line 2: class 0.5 is not a class index 0..1"),
    ("0 0.5 nope 0.2 0.2", "a.txt line 2: '0 0.5 nope 0.2 0.2' is not five numbers"),
])
def test_yolo_bad_lines_skip_the_image(tmp_path, line, message):
    root = write_yolo(tmp_path, {"a": f"0 0.5 0.5 0.2 0.2\n{line}\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    ds = load_yolo(root, 30)["train"]
    assert len(ds) == 1 and ds.paths[0].endswith("b.jpg")
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("a.jpg") and message in ds.skipped[0][1]
    with pytest.raises(DataError, match=re.escape(message)):
        load_yolo(root, 30, strict=True)


def test_yolo_zero_area_twice_named_and_orphan_labels(tmp_path):
    root = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.0 0.2\n1 0.5 0.5 0.2 0.2\n"})
    save_image(root / "images" / "train" / "a.png")          # a second image named a
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    ds = load_yolo(root, 30)["train"]
    assert len(ds) == 1 and ds.box_labels[0].tolist() == [2]
    reasons = {w.rsplit("/", 1)[1]: r for w, r in ds.skipped}
    assert reasons["a.txt"] == "line 1: box w=0.0 h=0.2 has no area; left out"
    assert "same name as" in reasons["a.png"] and "a.jpg" in reasons["a.png"]
    assert reasons["ghost.txt"] == "label file without an image of the same name"
    with pytest.raises(DataError, match=re.escape("a.txt: line 1: box w=0.0 h=0.2 has no area")):
        load_yolo(root, 30, strict=True)


def test_yolo_layout_and_class_list_errors(tmp_path):
    with pytest.raises(DataError, match="expected .*images/train/ and .*labels/train/"):
        load_yolo(tmp_path, 30)
    root = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, classes=None)
    with pytest.raises(DataError, match="no class list for .*classes.txt.*data.yaml"):
        load_yolo(root, 30)
    (root / "data.yaml").write_text("names: [cat, dog]\nnc: 3\n")
    with pytest.raises(DataError, match="data.yaml: nc is 3 but names lists 2 classes"):
        load_yolo(root, 30)
    (root / "data.yaml").write_text("names:\n  1: cat\n")
    with pytest.raises(DataError, match=r"names keys \[1\] are not the class indices 0..0"):
        load_yolo(root, 30)
    (root / "classes.txt").write_text("cat\n")
    (root / "labels" / "train" / "a.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"no usable images .*class 3 is not a class index 0..0"):
        load_yolo(root, 30)


# ---- COCO: image listed twice, boxes without area --------------------------------------------------------------

def coco_files(tmp_path, anns, images=None):
    for im in images:
        save_image(tmp_path / "images" / im["file_name"])
    js = tmp_path / "ann.json"
    js.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}))
    return tmp_path / "images", js


def ann(i, image_id, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": 3, "iscrowd": 0, "bbox": bbox,
            "segmentation": [[bbox[0], bbox[1], bbox[0] + 4, bbox[1], bbox[0] + 4, bbox[1] + 4]], **kw}


def test_coco_repeated_image_id_is_an_error(tmp_path):
    img_dir, js = coco_files(tmp_path, [], [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}])
    with pytest.raises(DataError, match="ann.json: image id 1 appears twice in images"):
        load_coco(img_dir, js, 30)


def test_coco_same_file_twice_is_skipped_and_listed(tmp_path):
    img_dir, js = coco_files(tmp_path, [ann(1, 1, [10, 5, 20, 20]), ann(2, 2, [0, 0, 5, 5])],
                             [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"},
                              {"id": 3, "file_name": "b.png"}])
    ds = load_coco(img_dir, js, 30)
    assert len(ds) == 2 and ds.boxes[0].tolist() == [[5, 5, 25, 25]]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("a.png")
    assert "image id 2 lists the same file as image id 1; left out" in ds.skipped[0][1]
    with pytest.raises(DataError, match="image id 2 lists the same file as image id 1"):
        load_coco(img_dir, js, 30, strict=True)


def test_coco_boxes_without_area_are_left_out_and_listed(tmp_path):
    img_dir, js = coco_files(tmp_path, [ann(1, 1, [10, 5, 0, 20]), ann(2, 1, [10, 5, 20, -3]),
                                        ann(3, 1, [10, 5, 20, 20])], [{"id": 1, "file_name": "a.png"}])
    ds = load_coco(img_dir, js, 30)
    assert len(ds) == 1 and ds.boxes[0].tolist() == [[5, 5, 25, 25]] and ds.box_labels[0].tolist() == [1]
    assert [w for w, _ in ds.skipped] == [str(js)] * 2
    assert ds.skipped[0][1] == "annotation 1 (image a.png): bbox [10, 5, 0, 20] has no area; the box is left out " \
                               "(its mask is kept)"
    assert "annotation 2 (image a.png): bbox [10, 5, 20, -3] has no area" in ds.skipped[1][1]
    assert (ds.masks[0] == 1).sum() > 0  # the masks of all three are painted
    with pytest.raises(DataError, match=re.escape("ann.json: annotation 1 (image a.png): bbox [10, 5, 0, 20]")):
        load_coco(img_dir, js, 30, strict=True)
