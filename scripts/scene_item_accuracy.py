"""A crop classifier's accuracy on the scenes' test items, by the share of each item left visible.

    python scripts/scene_item_accuracy.py runs/items [runs/items64 ...]

``runs/items``: a classification run on ``scripts/scene_item_crops.py`` crops.  Each test item's true-box crop is
classified (the same crop and resize as in training); an item's visible share is its visible pixels over the pixels
it would cover alone (its Fashion-MNIST image resized to its pasted side, above the paste threshold).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from det_error_budget import classify  # noqa: E402

BINS = ((0, .25), (.25, .5), (.5, .75), (.75, .95), (.95, 1.01))


def visible_share() -> np.ndarray:
    """``[M]`` visible share of every test item, in the order of the test split's boxes."""
    from visionsmith.data import fashion_mnist, scenes
    root = scenes.ensure_scenes()
    ann = json.loads((root / "annotations" / "test.json").read_text())["annotations"]
    fm = fashion_mnist.load()["test"].images[:, 0].numpy()
    full = [int((scenes.item_patch(fm[a["fm_index"]], a["paste"][2]) > scenes.THRESHOLD).sum()) for a in ann]
    return np.array([a["area"] for a in ann]) / np.array(full)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="classification runs on scene_item_crops.py crops")
    a = p.parse_args(argv)
    from visionsmith.data import scenes
    test = scenes.load_scenes()["test"]
    vis = visible_share()
    truth = np.concatenate([np.asarray(lab) - 1 for lab in test.box_labels])  # 0 = background in the scenes
    x = torch.as_tensor(np.asarray(test.images))
    for run in a.runs:
        probs = classify(x, [{"boxes": b} for b in test.boxes], run, list(test.classes[1:]))
        ok = torch.cat(probs).argmax(1).numpy() == truth
        print(f"{run}: accuracy {ok.mean():.4f} on {len(ok)} test items")
        for lo, hi in BINS:
            m = (vis >= lo) & (vis < hi)
            print(f"  visible {lo:.0%}-{min(hi, 1):.0%}: {m.sum():5d} items ({m.mean():5.1%})  accuracy {ok[m].mean():.4f}")


if __name__ == "__main__":
    main()
