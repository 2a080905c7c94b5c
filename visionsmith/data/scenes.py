"""fashion-mnist scenes: the embedded segmentation/detection default, built from real offline assets.

No segmentation or detection data set installs from a package registry, so this one is made
from two real sources that do: Fashion-MNIST items (the Debian package) pasted onto crops of
real photographs (scikit-image's bundled ``skimage.data`` photos and scikit-learn's
``load_sample_images``).  Each scene is a canvas (default 96x96 RGB) with 1-4 items, scaled to
20-56 px (at 96), each in a random tint that keeps its intensity texture.  An item's mask is
exactly the pixels drawn (its resized intensity > 0.25; only those are pasted), later items
cover earlier ones, and an item left with under 20 visible pixels is not drawn at all, so
semantic masks, instance masks and boxes (of the visible part) are exact.  Backgrounds are
dimmed, sometimes blurred, and carry clutter (lines, blobs) that belongs to no class.

Splits keep Fashion-MNIST's: train and val scenes use disjoint sets of FM train items, test scenes
only FM test items.  The scenes are written once, in COCO format, under
``$VISIONSMITH_HOME/cache/datasets/fashion_mnist_scenes-v1-<hash>/`` and read back through the same
``coco.load_coco`` that users' data goes through.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import cache, coco, fashion_mnist
from .errors import DataError
from .segmentation import SegmentationDataset

VERSION = 1  # part of the folder name: bump it whenever a change here changes the scenes
CLASSES = [coco.BACKGROUND] + list(fashion_mnist.CLASSES)
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                  "stereo_motorcycle", "immunohistochemistry", "coins", "moon", "grass", "gravel", "brick")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
THRESHOLD = 0.25        # an item pixel is drawn (and labelled) where its resized intensity is above this
ITEMS = (1, 4)          # items per scene, inclusive
ITEM_SIDE = (20, 56)    # item side in px at canvas 96 (scaled with the canvas)
MIN_VISIBLE = 20        # px at canvas 96: an item covered down to fewer is left out of the scene
VAL_POOL = 6000         # FM train items reserved for val scenes; the other 54000 make train scenes
_SALT = {"train": 1, "val": 2, "test": 3}


@functools.lru_cache(maxsize=4)
def photos(canvas: int) -> tuple[tuple[str, Image.Image], ...]:
    """The offline photographs as RGB images, shrunk so the shorter side is ``2 * canvas``.

    A photo this installation lacks is left out (its name is part of the cache hash).  Kept per
    process: loading them takes about a second.
    """
    import skimage.data
    from sklearn.datasets import load_sample_images
    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # a photo that needs a download (pooch) in this skimage version
            continue
        out.append((name, a[0] if isinstance(a, tuple) else a))
    sk = load_sample_images()
    out += [(Path(f).name, a) for f, a in zip(sk.filenames, sk.images) if Path(f).name in SKLEARN_PHOTOS]
    shrunk = []
    for name, a in out:
        im = Image.fromarray(np.asarray(a, np.uint8)).convert("RGB")
        s = 2 * canvas / min(im.size)
        shrunk.append((name, im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.Resampling.BILINEAR)))
    return tuple(shrunk)


def background(photo: Image.Image, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """float32 ``[canvas, canvas, 3]`` in [0, 1]: a random crop of ``photo``, flipped, blurred, with clutter, dimmed."""
    w, h = photo.size
    side = rng.uniform(0.5, 1.0) * min(w, h)
    x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
    im = photo.resize((canvas, canvas), Image.Resampling.BILINEAR, box=(x, y, x + side, y + side))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    radius = rng.uniform(0, 1.5)
    if radius > 1.0:  # a third of the backgrounds, softly: blurring costs more than the rest of a scene
        im = im.filter(ImageFilter.GaussianBlur(radius))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 4))):  # clutter: lines and blobs that are no class (background)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p = rng.uniform(0, canvas, 4)
        if rng.random() < 0.5:
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(2, canvas / 10, 2)
            draw.ellipse([p[0] - r[0], p[1] - r[1], p[0] + r[0], p[1] + r[1]], fill=colour)
    return np.asarray(im, np.float32) * np.float32(rng.uniform(0.35, 0.75) / 255)


def item_patch(item: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``[28, 28]`` FM item -> float32 ``[side, side]`` intensity in [0, 1] (bilinear, antialiased)."""
    return np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255


def item_colour(v: np.ndarray, tint) -> np.ndarray:
    """float32 ``[..., 3]``: an item pixel of intensity ``v`` (> THRESHOLD) in ``tint`` (3 floats in [0, 1])."""
    return np.asarray(tint, np.float32) * (np.float32(0.35) + np.float32(0.65) * v)[..., None]


def render(bg: np.ndarray, items: list[dict], fm_images: np.ndarray, min_visible: int):
    """Paste ``items`` (dicts with fm_index, x, y, side, tint) on ``bg`` in order.

    -> (image uint8 ``[S, S, 3]``, ids uint8 ``[S, S]`` (k = visible pixel of the k-th kept item, 0 none),
    kept items).  An item whose visible part is under ``min_visible`` pixels is left out entirely and
    the rest re-pasted, so every drawn item pixel belongs to a kept item.
    """
    s = bg.shape[0]
    patches = [item_patch(fm_images[it["fm_index"]], it["side"]) for it in items]
    keep = list(range(len(items)))
    while True:
        ids = np.zeros((s, s), np.uint8)
        for k, j in enumerate(keep, 1):
            it = items[j]
            ids[it["y"]:it["y"] + it["side"], it["x"]:it["x"] + it["side"]][patches[j] > THRESHOLD] = k
        counts = np.bincount(ids.ravel(), minlength=len(keep) + 1)[1:]
        if (counts >= min_visible).all():
            break
        keep = [j for j, c in zip(keep, counts) if c >= min_visible]
    img = bg.copy()
    for j in keep:
        it, v = items[j], patches[j]
        region = img[it["y"]:it["y"] + it["side"], it["x"]:it["x"] + it["side"]]
        region[v > THRESHOLD] = item_colour(v[v > THRESHOLD], it["tint"])
    return np.rint(img * 255).astype(np.uint8), ids, [items[j] for j in keep]


def generate_split(split: str, n: int, canvas: int, seed: int, fm: dict, bgs: list) -> dict:
    """``n`` scenes of ``split`` -> {"images": uint8 [n, S, S, 3], "ids": uint8 [n, S, S],
    "items": per scene the kept item dicts (label 1..10, fm_split, fm_index, x, y, side, tint), "backgrounds"}."""
    fm_split = "test" if split == "test" else "train"
    perm = np.random.default_rng([seed, 0]).permutation(len(fm[fm_split].labels))
    pool = perm if split == "test" else (perm[:VAL_POOL] if split == "val" else perm[VAL_POOL:])
    fm_images, fm_labels = fm[fm_split].images[:, 0].numpy(), fm[fm_split].labels.numpy()
    rng = np.random.default_rng([seed, _SALT[split]])
    lo, hi = (round(v * canvas / 96) for v in ITEM_SIDE)
    min_visible = max(1, round(MIN_VISIBLE * (canvas / 96) ** 2))
    images = np.empty((n, canvas, canvas, 3), np.uint8)
    ids = np.empty((n, canvas, canvas), np.uint8)
    kept, names, used = [], [], 0
    for i in range(n):
        name, photo = bgs[int(rng.integers(len(bgs)))]
        bg = background(photo, canvas, rng)
        items = []
        for _ in range(int(rng.integers(ITEMS[0], ITEMS[1] + 1))):
            idx, used = int(pool[used % len(pool)]), used + 1
            side = int(rng.integers(lo, hi + 1))
            x, y = (int(v) for v in rng.integers(0, canvas - side + 1, 2))
            rgb = rng.uniform(0.2, 1.0, 3)  # a light tint (brightest channel 1): items stand out on the dimmed photo
            tint = [round(float(c), 4) for c in rgb / rgb.max()]  # rounded as stored in the JSON, then used
            items.append({"label": int(fm_labels[idx]) + 1, "fm_split": fm_split, "fm_index": idx,
                          "x": x, "y": y, "side": side, "tint": tint})
        images[i], ids[i], k = render(bg, items, fm_images, min_visible)
        kept.append(k)
        names.append(name)
    return {"images": images, "ids": ids, "items": kept, "backgrounds": names}


def semantic(ids: np.ndarray, items: list[dict]) -> np.ndarray:
    """uint8 ``[S, S]`` class mask of one scene from its ids map and kept items (0 = background)."""
    lut = np.array([0] + [it["label"] for it in items], np.uint8)
    return lut[ids]


def write_split(root: Path, split: str, data: dict, info: dict) -> None:
    """``root/images/<split>/<i>.png`` + ``root/annotations/<split>.json`` (RLE of each visible item)."""
    from concurrent.futures import ThreadPoolExecutor
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"{i:05d}.png" for i in range(len(data["images"]))]
    # PNG encoding is most of the writing time, and Pillow's encoder releases the GIL
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        saved = pool.map(lambda i: Image.fromarray(data["images"][i]).save(folder / files[i], compress_level=1),
                         range(len(files)))
        images, anns = [], []
        for i, (ids, items, bg) in enumerate(zip(data["ids"], data["items"], data["backgrounds"])):
            images.append({"id": i + 1, "file_name": files[i], "width": ids.shape[1], "height": ids.shape[0],
                           "background": bg})
            for k, it in enumerate(items, 1):
                m = ids == k
                xs, ys = np.flatnonzero(m.any(0)), np.flatnonzero(m.any(1))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": it["label"],
                             "segmentation": coco.encode_rle(m), "area": int(m.sum()),
                             "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)],
                             "iscrowd": 0, "fm_split": it["fm_split"], "fm_index": it["fm_index"],
                             "paste": [it["x"], it["y"], it["side"]], "tint": it["tint"]})
        list(saved)  # re-raise a failed write here
    cats = [{"id": k, "name": n, "supercategory": "fashion"} for k, n in enumerate(fashion_mnist.CLASSES, 1)]
    coco.write_coco(root / "annotations" / f"{split}.json", images, anns, cats, {**info, "split": split})


def _params(canvas: int, counts: dict, seed: int, photo_names: list[str]) -> dict:
    return {"version": VERSION, "canvas": canvas, "counts": counts, "seed": seed, "photos": photo_names,
            "threshold": THRESHOLD, "items": ITEMS, "item_side": ITEM_SIDE, "min_visible": MIN_VISIBLE,
            "val_pool": VAL_POOL}


def scenes_dir(canvas: int = 96, n_train: int = 8000, n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> Path:
    """Where the scenes of these parameters live (written or not)."""
    names = [n for n, _ in photos(canvas)]
    p = _params(canvas, {"train": n_train, "val": n_val, "test": n_test}, seed, names)
    h = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    return cache.cache_dir() / "datasets" / f"fashion_mnist_scenes-v{VERSION}-{h}"


def ensure_scenes(canvas: int = 96, n_train: int = 8000, n_val: int = 1000, n_test: int = 1000,
                  seed: int = 0) -> Path:
    """Generate and write the scenes unless they are there; -> their folder.  Atomic: written to a temp
    folder beside it and renamed, so a crash leaves no half data set (only a ``.tmp-*`` folder)."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if any(n < 0 for n in counts.values()) or n_train < 1:
        raise DataError(f"scene counts must be >= 0 and n_train >= 1, got {counts}")
    if canvas < 32:
        raise DataError(f"scene canvas must be >= 32 px, got {canvas}")
    root = scenes_dir(canvas, n_train, n_val, n_test, seed)
    if (root / "annotations" / "train.json").is_file():
        return root
    bgs = photos(canvas)
    fm = fashion_mnist.load()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".tmp-{root.name}-"))
    try:
        info = {"description": describe(), **_params(canvas, counts, seed, [n for n, _ in bgs])}
        for split, n in counts.items():
            if n:
                write_split(tmp, split, generate_split(split, n, canvas, seed, fm, bgs), info)
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: keep its copy
            if not (root / "annotations" / "train.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load_scenes(size: int = 96, n_train: int = 8000, n_val: int = 1000, n_test: int = 1000, seed: int = 0,
                canvas: int = 96) -> dict[str, SegmentationDataset]:
    """``{"train", "val", "test"}`` scenes at ``size``, with boxes; a split of 0 scenes is left out.

    images uint8 ``[N, 3, size, size]``, masks uint8 ``[N, size, size]`` (0 background, 1..10 the FM
    classes), boxes float32 ``[M_i, 4]`` xyxy, box_labels int64 ``[M_i]``.  The scenes are drawn at
    ``canvas`` and resized to ``size`` by the COCO loader (masks NEAREST), so every image size trains
    and scores on the same scenes.  The first call writes the COCO files (about half a minute for the
    defaults); later calls read them (and then the decoded cache: about a second).
    """
    root = ensure_scenes(canvas, n_train, n_val, n_test, seed)
    out = {}
    for split in ("train", "val", "test"):
        if (root / "annotations" / f"{split}.json").is_file():
            try:  # strict: these files are ours, any fault means they were damaged after writing
                out[split] = coco.load_coco(root / "images" / split, root / "annotations" / f"{split}.json", size,
                                            name=f"fashion_mnist_scenes/{split}", strict=True)
            except DataError as e:
                raise DataError(f"{e} (the generated scenes are damaged: delete {root} to make them again)") from None
    assert out["train"].classes == CLASSES, out["train"].classes
    return out


def describe() -> str:
    """One line for a ``visionsmith datasets`` listing."""
    return ("fashion_mnist_scenes: segmentation/detection scenes, 1-4 real Fashion-MNIST items (10 classes + "
            f"background) on crops of {len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)} real photos (skimage, sklearn), "
            "96x96 RGB, 8000/1000/1000 train/val/test (test items from FM test only); made offline, COCO format")
