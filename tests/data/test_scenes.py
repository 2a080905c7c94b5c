"""fashion-mnist scenes: deterministic, split-clean, exact masks, and the COCO files equal the generation."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visionsmith.data import DataError, cache, fashion_mnist, scenes
from visionsmith.data.coco import ann_mask

COUNTS = {"n_train": 24, "n_val": 8, "n_test": 8}  # 40 scenes: the tests stay fast


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The small scenes written and loaded once, in a private home, plus what the checks need."""
    home = tmp_path_factory.mktemp("scenes_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONSMITH_HOME", str(home))
        ds = scenes.load_scenes(**COUNTS)
        root = scenes.scenes_dir(96, **COUNTS)
        fm = fashion_mnist.load()
    coco = {s: json.loads((root / "annotations" / f"{s}.json").read_text()) for s in ds}
    return SimpleNamespace(home=home, ds=ds, root=root, fm=fm, coco=coco, bgs=scenes.photos(96))


def test_load_gives_three_splits_with_boxes(made):
    assert {s: len(d) for s, d in made.ds.items()} == {"train": 24, "val": 8, "test": 8}
    for split, d in made.ds.items():
        assert d.classes == scenes.CLASSES == ["background"] + fashion_mnist.CLASSES
        assert d.images.shape == (len(d), 3, 96, 96) and d.masks.shape == (len(d), 96, 96)
        assert d.name == f"fashion_mnist_scenes/{split}" and d.skipped == []
        assert all(1 <= len(b) <= 4 for b in d.boxes) and int(d.masks.max()) <= 10
    assert len(made.bgs) >= 10  # skimage + sklearn photos that ship in the wheels
    assert "\n" not in scenes.describe() and "fashion_mnist_scenes" in scenes.describe()


def test_second_call_reuses_the_files(made, monkeypatch):
    monkeypatch.setenv("VISIONSMITH_HOME", str(made.home))
    monkeypatch.setattr(scenes, "generate_split", lambda *a, **k: pytest.fail("generated again"))
    hits = cache.stats["cache_hits"]
    again = scenes.load_scenes(**COUNTS)
    assert cache.stats["cache_hits"] > hits and torch.equal(again["train"].images, made.ds["train"].images)


def test_another_size_resizes_the_same_scenes(made, monkeypatch):
    monkeypatch.setenv("VISIONSMITH_HOME", str(made.home))
    monkeypatch.setattr(scenes, "generate_split", lambda *a, **k: pytest.fail("generated again"))
    small = scenes.load_scenes(48, **COUNTS)["val"]
    big = made.ds["val"]
    assert small.images.shape == (8, 3, 48, 48) and torch.equal(small.masks, big.masks[:, 1::2, 1::2])  # NEAREST
    assert all(torch.equal(s, b / 2) for s, b in zip(small.boxes, big.boxes))


def test_same_seed_same_scenes_other_seed_other_scenes(made):
    a = scenes.generate_split("val", 5, 96, 0, made.fm, made.bgs)
    b = scenes.generate_split("val", 5, 96, 0, made.fm, made.bgs)
    c = scenes.generate_split("val", 5, 96, 1, made.fm, made.bgs)
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["ids"], b["ids"]) and a["items"] == b["items"]
    assert not np.array_equal(a["images"], c["images"])


def test_no_test_item_comes_from_fashion_mnist_train(made):
    used = {s: [(a["fm_split"], a["fm_index"]) for a in made.coco[s]["annotations"]] for s in made.coco}
    assert {f for f, _ in used["test"]} == {"test"}
    assert {f for f, _ in used["train"] + used["val"]} == {"train"}
    assert not {i for _, i in used["train"]} & {i for _, i in used["val"]}  # disjoint item sets
    for split, anns in made.coco.items():  # and each annotation's class is its item's FM label
        fm = made.fm["test" if split == "test" else "train"]
        assert all(a["category_id"] == int(fm.labels[a["fm_index"]]) + 1 for a in anns["annotations"])


def test_masks_are_exactly_the_pasted_pixels(made):
    """Re-render every item from its FM index, place and tint: its mask is what it drew minus what later
    items drew over it, and the image holds its colour on exactly those pixels."""
    for split, d in made.ds.items():
        fm = made.fm["test" if split == "test" else "train"].images[:, 0].numpy()
        anns = made.coco[split]["annotations"]
        for i in range(len(d)):
            own = [a for a in anns if a["image_id"] == i + 1]
            drawn = []
            for a in own:
                x, y, side = a["paste"]
                v = scenes.item_patch(fm[a["fm_index"]], side)
                m = np.zeros((96, 96), bool)
                m[y:y + side, x:x + side] = v > scenes.THRESHOLD
                full = np.zeros((96, 96), np.float32)
                full[y:y + side, x:x + side] = v
                drawn.append((m, full, a))
            img = d.images[i].permute(1, 2, 0).numpy()
            union = np.zeros((96, 96), bool)
            for m, full, a in reversed(drawn):  # the last item is on top
                visible = m & ~union
                union |= m
                assert np.array_equal(ann_mask(a["segmentation"], 96, 96, "test"), visible)
                assert a["area"] == visible.sum() >= scenes.MIN_VISIBLE
                want = np.rint(scenes.item_colour(full[visible], a["tint"]) * 255).astype(np.uint8)
                assert np.array_equal(img[visible], want)
            assert np.array_equal(d.masks[i].numpy() > 0, union)


def test_every_labelled_pixel_lies_in_a_box_of_its_class(made):
    for d in made.ds.values():
        for mask, boxes, labels in zip(d.masks, d.boxes, d.box_labels):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            k = mask[ys, xs].long()
            inside = ((xs[:, None] >= boxes[:, 0]) & (xs[:, None] < boxes[:, 2]) & (ys[:, None] >= boxes[:, 1])
                      & (ys[:, None] < boxes[:, 3]) & (k[:, None] == labels[None]))
            assert inside.any(1).all()


def test_coco_files_equal_the_in_memory_generation(made):
    n = {"train": COUNTS["n_train"], "val": COUNTS["n_val"], "test": COUNTS["n_test"]}
    for split, d in made.ds.items():
        g = scenes.generate_split(split, n[split], 96, 0, made.fm, made.bgs)
        assert torch.equal(d.images, torch.from_numpy(g["images"]).permute(0, 3, 1, 2))
        sem = np.stack([scenes.semantic(ids, items) for ids, items in zip(g["ids"], g["items"])])
        assert torch.equal(d.masks, torch.from_numpy(sem))
        for boxes, labels, ids, items in zip(d.boxes, d.box_labels, g["ids"], g["items"]):
            assert labels.tolist() == [it["label"] for it in items]
            for b, k in zip(boxes.tolist(), range(1, len(items) + 1)):
                ys, xs = np.nonzero(ids == k)
                assert b == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_a_failed_write_leaves_nothing_behind(made, monkeypatch):
    monkeypatch.setenv("VISIONSMITH_HOME", str(made.home))
    real = scenes.write_split

    def fail_on_val(root, split, data, info):
        if split == "val":
            raise OSError("disk full")
        real(root, split, data, info)

    monkeypatch.setattr(scenes, "write_split", fail_on_val)
    with pytest.raises(OSError, match="disk full"):
        scenes.load_scenes(n_train=2, n_val=1, n_test=1, seed=7)
    assert not scenes.scenes_dir(96, 2, 1, 1, 7).exists()
    assert not [p for p in scenes.scenes_dir(96, 2, 1, 1, 7).parent.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(DataError, match="n_train >= 1"):
        scenes.load_scenes(n_train=0)
