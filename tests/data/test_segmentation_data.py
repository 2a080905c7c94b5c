"""Segmentation data on real files: SegmentationDataset, mask-PNG pairs, Pascal VOC, COCO, and bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from visionsmith.data import BadImageError, DataError, cache
from visionsmith.data.coco import encode_rle, load_coco, load_coco_root
from visionsmith.data.segmentation import (IGNORE_INDEX, VOC_CLASSES, SegmentationDataset, fit_boxes, load_masks,
                                           load_voc)

CLASSES = ["background", "cat", "dog"]
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def square_mask(w=40, h=30, box=(10, 5, 30, 25), value=1) -> np.ndarray:
    """uint8 [h, w], ``value`` inside ``box`` (x0, y0, x1, y1), 0 outside."""
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = value
    return m


def write_pair(root, name, mask, mode="L", ext=".png"):
    h, w = mask.shape
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}{ext}")
    if mode == "P":
        im = Image.fromarray(mask, "P")
        im.putpalette([c for rgb in PALETTE for c in rgb] + [224, 224, 192] * 253)
    elif mode == "RGB":
        lut = np.array(PALETTE + [(9, 9, 9)] * 253, np.uint8)
        im = Image.fromarray(lut[mask])
    else:
        im = Image.fromarray(mask)
    im.save(root / "masks" / f"{name}.png")


# ---- SegmentationDataset ---------------------------------------------------------------------------------------

def tiny(n=4) -> SegmentationDataset:
    masks = torch.zeros(n, 4, 4, dtype=torch.uint8)
    masks[:, :2] = 1
    masks[0, 3, 3] = IGNORE_INDEX
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 2.0]]) for _ in range(n)]
    return SegmentationDataset(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), masks, ["bg", "x"], "tiny/train",
                               [f"{i}.png" for i in range(n)], [("bad.png", "zero-byte")], boxes,
                               [torch.tensor([1]) for _ in range(n)])


def test_dataset_basics():
    ds = tiny()
    assert len(ds) == 4 and ds.num_classes == 2
    assert ds.class_pixel_counts().tolist() == [4 * 8 - 1, 4 * 8]  # the ignored pixel counts for no class
    sub = ds.subset(torch.tensor([2, 0]))
    assert sub.paths == ["2.png", "0.png"] and sub.skipped == [] and len(sub.boxes) == 2
    assert sub.masks[1, 3, 3] == IGNORE_INDEX
    assert ds.renamed("tiny/val").name == "tiny/val" and ds.renamed("v", []).skipped == []


def test_dataset_validation_names_the_split():
    im = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="masks must be uint8"):
        SegmentationDataset(im, torch.zeros(2, 4, 5, dtype=torch.uint8), ["a", "b"], "s/train")
    bad = torch.zeros(2, 4, 4, dtype=torch.uint8)
    bad[1, 0, 0] = 7
    with pytest.raises(ValueError, match=r"s/train: mask 1 holds value 7"):
        SegmentationDataset(im, bad, ["a", "b"], "s/train")
    with pytest.raises(ValueError, match="boxes"):
        SegmentationDataset(im, torch.zeros(2, 4, 4, dtype=torch.uint8), ["a", "b"], "s/train",
                            boxes=[torch.zeros(1, 4)] * 2, box_labels=[torch.tensor([5])] * 2)


def test_fit_boxes_follow_the_centre_crop():
    # 40x30 image -> centre crop x 5..35, then x0.5 to 15x15
    b, keep = fit_boxes(np.array([[5, 0, 35, 30], [0, 0, 4, 4]], np.float32), 40, 30, 15)
    assert keep.tolist() == [True, False] and b.tolist() == [[0, 0, 15, 15]]


# ---- mask-PNG pairs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_mask_pairs_all_mask_modes(tmp_path, mode):
    root = tmp_path / "ds"
    for i in range(3):
        write_pair(root, f"im{i}", square_mask(value=1 + i % 2))
    lines = [f"{n} {r} {g} {b}" for n, (r, g, b) in zip(CLASSES, PALETTE)] if mode == "RGB" else CLASSES
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    ds = load_masks(root, 15)["train"]
    assert ds.classes == CLASSES and ds.images.shape == (3, 3, 15, 15) and ds.masks.shape == (3, 15, 15)
    # the square x 10..30, y 5..25 of a 40x30 mask -> crop x 5..35 -> NEAREST at scale 1/2: output pixel i
    # samples the source at 2i + 1 (+ 5 in x), inside the square for i = 2..11
    expect = np.zeros((15, 15), np.uint8)
    expect[2:12, 2:12] = 1
    assert np.array_equal(ds.masks[0].numpy(), expect) and set(ds.masks[1].unique().tolist()) == {0, 2}
    assert ds.skipped == [] and ds.boxes is None


def test_mask_pairs_with_splits_and_nearest_resize(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        m = np.zeros((64, 64), np.uint8)
        m[:, 32:] = 2
        m[::2, ::2] = IGNORE_INDEX
        write_pair(root / split, "a", m)
    (root / "classes.txt").write_text("\n".join(CLASSES))
    out = load_masks(root, 20)
    assert set(out) == {"train", "val"}
    assert set(out["val"].masks.unique().tolist()) <= {0, 2, IGNORE_INDEX}  # never a blend like 1


def test_bad_pairs_are_skipped_or_raised(tmp_path, bad_files):
    root = tmp_path / "ds"
    write_pair(root, "good", square_mask())
    write_pair(root, "small_mask", square_mask())
    Image.fromarray(square_mask(20, 15, (0, 0, 5, 5))).save(root / "masks" / "small_mask.png")
    write_pair(root, "bad_value", square_mask(value=9))
    write_pair(root, "no_mask", square_mask())
    (root / "masks" / "no_mask.png").unlink()
    write_pair(root, "orphan", square_mask())
    (root / "images" / "orphan.png").unlink()
    write_pair(root, "twice", square_mask())
    (root / "images" / "twice.jpg").write_bytes((root / "images" / "twice.png").read_bytes())
    (root / "images" / "truncated.png").write_bytes(bad_files["truncated"].read_bytes())
    Image.fromarray(square_mask()).save(root / "masks" / "truncated.png")
    (root / "classes.txt").write_text("\n".join(CLASSES))
    ds = load_masks(root, 16)["train"]
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["good.png", "twice.jpg"]
    why = {p.rsplit("/", 1)[1]: r for p, r in ds.skipped}
    assert "mask is 20x15 but its image" in why["small_mask.png"] and "is 40x30" in why["small_mask.png"]
    assert "mask values 9 are not classes (0..2)" in why["bad_value.png"]
    assert "no mask" in why["no_mask.png"] and "without an image" in why["orphan.png"]
    assert "truncated" in why["truncated.png"] and "same name as" in why["twice.png"]
    with pytest.raises(DataError, match="no_mask.png: no mask"):
        load_masks(root, 16, strict=True)
    (root / "images" / "no_mask.png").unlink()
    (root / "masks" / "orphan.png").unlink()
    (root / "images" / "twice.png").unlink()
    with pytest.raises(DataError, match=r"bad_value.png: mask values 9|small_mask.png: mask is 20x15"):
        load_masks(root, 16, strict=True)


def test_rgb_colour_not_in_palette_names_file_and_colour(tmp_path):
    root = tmp_path / "ds"
    m = square_mask()
    write_pair(root, "a", m, mode="RGB")
    rgb = np.array(Image.open(root / "masks" / "a.png"))
    rgb[2, 3] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "masks" / "a.png")
    (root / "palette.txt").write_text("\n".join(f"{n} {r} {g} {b}" for n, (r, g, b) in zip(CLASSES, PALETTE)))
    with pytest.raises(DataError, match=r"a.png: colour \(1, 2, 3\) at x=3 y=2 is not in the palette"):
        load_masks(root, 16, strict=True)
    (root / "palette.txt").unlink()
    (root / "classes.txt").write_text("\n".join(CLASSES))
    with pytest.raises(DataError, match="RGB mask but no palette"):
        load_masks(root, 16, strict=True)


def test_empty_and_unlabelled_roots(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="no image with a mask"):
        load_masks(root, 16)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class list"):
        load_masks(root, 16)
    with pytest.raises(DataError, match="expected"):
        load_masks(tmp_path, 16)


def test_mask_pairs_are_cached(tmp_path):
    root = tmp_path / "ds"
    write_pair(root, "a", square_mask())
    first = load_masks(root, 16, classes=CLASSES)["train"]
    hits = cache.stats["cache_hits"]
    again = load_masks(root, 16, classes=CLASSES)["train"]
    assert cache.stats["cache_hits"] == hits + 1 and torch.equal(first.masks, again.masks)


# ---- Pascal VOC ------------------------------------------------------------------------------------------------

def test_voc_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((30, 40, 3), 100, np.uint8)).save(root / "JPEGImages" / f"2007_{i}.jpg")
        m = square_mask(value=15)
        m[5, 10:30] = IGNORE_INDEX  # VOC's object border
        im = Image.fromarray(m, "P")
        im.putpalette([0, 0, 0] * 256)
        im.save(root / "SegmentationClass" / f"2007_{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_0\n2007_1\n2007_9\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_2\n")
    out = load_voc(tmp_path, 20)
    assert out["train"].classes == VOC_CLASSES and len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    assert len(out["train"]) == 2 and len(out["val"]) == 1
    assert set(out["val"].masks.unique().tolist()) == {0, 15, IGNORE_INDEX}
    assert "no mask" in out["train"].skipped[0][1]


# ---- COCO ------------------------------------------------------------------------------------------------------

def coco_files(tmp_path, anns, images=None, categories=None, w=40, h=30):
    img_dir = tmp_path / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "width": w, "height": h},
                        {"id": 2, "file_name": "b.png", "width": w, "height": h}]
    for im in images:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img_dir / im["file_name"])
    categories = categories or [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    js = tmp_path / "ann.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return img_dir, js


def ann(i, image_id, cat, segm, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "segmentation": segm, "iscrowd": 0, **kw}


def test_coco_polygons_rle_crowd_and_empty_images(tmp_path):
    dog = square_mask(40, 30, (0, 0, 20, 10)).astype(bool)
    crowd = square_mask(40, 30, (20, 20, 40, 30)).astype(bool)
    runs = encode_rle(crowd)
    from pycocotools import mask as mu
    unc = {"size": [30, 40], "counts": [int(c) for c in _runs(crowd)]}
    anns = [ann(1, 1, 3, [[10, 5, 30, 5, 30, 25, 10, 25]], bbox=[10, 5, 20, 20]),   # cat polygon
            ann(2, 1, 7, encode_rle(dog)),                                           # dog, compressed RLE, no bbox
            ann(3, 1, 3, unc, iscrowd=1)]                                            # crowd, uncompressed RLE
    img_dir, js = coco_files(tmp_path, anns)
    ds = load_coco(img_dir, js, 30)  # 40x30 -> crop x 5..35 -> 30x30, no scaling
    assert ds.classes == ["background", "cat", "dog"]  # ids 3, 7 -> 1, 2
    m = ds.masks[0].numpy()
    assert m[15, 15] == 1 and m[10, 10] == 1 and m[4, 20] == 0
    assert m[0, 0] == 2 and m[7, 12] == 2  # the dog, painted after the cat, covers it
    assert (m[20:, 15:] == IGNORE_INDEX).all() and m[29, 0] == 0
    assert ds.boxes[0].tolist() == [[5, 5, 25, 25], [0, 0, 15, 10]] and ds.box_labels[0].tolist() == [1, 2]
    assert (ds.masks[1] == 0).all() and ds.boxes[1].shape == (0, 4)  # no annotations: all background, kept
    assert mu.area(runs) == crowd.sum()


def _runs(m: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask (column-major, starting with zeros)."""
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("case, message", [
    ("short_polygon", "annotation 1 (image a.png): polygon 0 has 2 point(s); a polygon needs at least 3"),
    ("unknown_category", "annotation 1 (image a.png): category id 99 is not in categories (3, 7)"),
    ("bad_rle", "annotation 1 (image a.png): RLE runs cover 10 pixels, the image has 1200"),
    ("rle_size", "annotation 1 (image a.png): RLE size [3, 4] is not the image's [height, width] [30, 40]"),
    ("wrong_size", "image a.png is 40x30 but the annotations say 64x64"),
])
def test_coco_bad_annotations(tmp_path, case, message):
    segm = {"short_polygon": [[1, 1, 5, 5]], "bad_rle": {"size": [30, 40], "counts": [5, 5]},
            "rle_size": {"size": [3, 4], "counts": [12]}}.get(case, [[10, 5, 30, 5, 30, 25]])
    images = None
    if case == "wrong_size":
        images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 64},
                  {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    img_dir, js = coco_files(tmp_path, [ann(1, 1, 99 if case == "unknown_category" else 3, segm)], images)
    ds = load_coco(img_dir, js, 16)
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["b.png"]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("a.png")
    assert str(js) in ds.skipped[0][1]
    assert message in ds.skipped[0][1]
    with pytest.raises(DataError, match=re.escape(message)):
        load_coco(img_dir, js, 16, strict=True)


def test_coco_not_json_missing_image_and_layout(tmp_path, bad_files):
    js = tmp_path / "ann.json"
    js.write_text("images: [not json")
    with pytest.raises(DataError, match=r"ann.json: not JSON"):
        load_coco(tmp_path, js, 16)
    js.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instances file"):
        load_coco(tmp_path, js, 16)
    js.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DataError, match="ann.json: no images"):
        load_coco(tmp_path, js, 16)
    img_dir, js = coco_files(tmp_path, [ann(1, 5, 3, [[1, 1, 5, 1, 5, 5]])])
    (img_dir / "b.png").write_bytes(bad_files["truncated"].read_bytes())
    ds = load_coco(img_dir, js, 16)
    assert len(ds) == 1 and any("image id 5" in r for _, r in ds.skipped)
    assert any(p.endswith("b.png") and "truncated" in r for p, r in ds.skipped)
    with pytest.raises(DataError, match="image id 5"):
        load_coco(img_dir, js, 16, strict=True)
    # a COCO-style folder: annotations/{train,val}.json + images/{train,val}
    root = tmp_path / "coco"
    for split in ("train", "val"):
        d, j = coco_files(tmp_path / split, [ann(1, 1, 3, [[1, 1, 9, 1, 9, 9]])])
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        d.rename(root / "images" / split)
        j.rename(root / "annotations" / f"{split}.json")
    out = load_coco_root(root, 16)
    assert set(out) == {"train", "val"} and out["val"].name == "coco/val" and out["val"].masks.max() == 1
    (js.parent / "ann.json").write_text(json.dumps({**json.loads(js.read_text()), "annotations": []}))
    with pytest.raises(BadImageError, match="b.png: truncated"):
        load_coco(img_dir, js, 16, strict=True)
