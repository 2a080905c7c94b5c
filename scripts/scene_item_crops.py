"""Write the items of the fashion-mnist scenes as a classification folder: one crop per true box.

    python scripts/scene_item_crops.py /tmp/scene-items
    visionsmith train recipes/fashion-mnist-quick.yaml data.name=folder data.root=/tmp/scene-items --out runs/items

What it answers: how well can the visible part of a scene item (tinted, on a photo, partly occluded, 20-56 px) be
named by a classifier that is handed its true box?  That accuracy is a ceiling on the class half of a detector or a
segmenter on these scenes, where the clean 28 px Fashion-MNIST originals are not (docs/detection.md uses it).

Each crop is the square around the true box (its longer side, plus 2 px), cut from the 96 px scene (black beyond the
edge) and saved as a PNG: ``ROOT/{train,test}/<class>/<split>-<scene>-<item>.png``; train gets the 8,000 train and
1,000 val scenes, test the 1,000 test scenes (Fashion-MNIST test items only), the splits the detector uses.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def crop_square(img: np.ndarray, box, pad: int = 2) -> np.ndarray:
    """``img [H, W, 3]`` uint8, ``box`` x1 y1 x2 y2 -> the square crop around it (zeros beyond the image)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) + 2 * pad
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    a, b = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    out = np.zeros((s, s, 3), np.uint8)
    h, w = img.shape[:2]
    ya, yb, xa, xb = max(b, 0), min(b + s, h), max(a, 0), min(a + s, w)
    out[ya - b:yb - b, xa - a:xb - a] = img[ya:yb, xa:xb]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="output folder (ROOT/train/<class>/..., ROOT/test/<class>/...)")
    a = p.parse_args(argv)
    from visionsmith.data import scenes
    data = scenes.load_scenes()
    classes = data["train"].classes  # index 0 is "background": box labels are 1..10
    n = 0
    for split, out in (("train", "train"), ("val", "train"), ("test", "test")):
        ds = data[split]
        for i, (img, boxes, labels) in enumerate(zip(ds.images, ds.boxes, ds.box_labels)):
            hwc = np.asarray(img).transpose(1, 2, 0)
            for j, (box, lab) in enumerate(zip(np.asarray(boxes), np.asarray(labels))):
                d = a.root / out / classes[int(lab)].replace("/", "-")
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop_square(hwc, box)).save(d / f"{split}-{i}-{j}.png")
                n += 1
    print(f"{n} crops under {a.root}")


if __name__ == "__main__":
    main()
