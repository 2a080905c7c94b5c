"""Where a scenes segmentation run's mIoU goes: its test mIoU beside what it would score with oracle help.

    python scripts/seg_error_budget.py runs/scenes-seg [--classifier runs/fm-quick]
    python scripts/seg_error_budget.py --classifier runs/items     # the ceiling alone

- as is: the run's own predictions (equals `visionsmith eval`);
- foreground IoU: item pixels against background, classes ignored;
- oracle class: the predicted item pixels that are truly item pixels take their true class (the masks as
  predicted, the classes perfect): what a perfect item classifier on top of these masks would give;
- oracle edges: pixels within 1 px of a label change take their true label (perfect boundaries);
- with ``--classifier`` (a classification run): the expected mIoU of PERFECT masks whose items are
  classified with that classifier's test confusion matrix (every pixel of an item gets the item's class): a
  ceiling for a model that recognises items no better than that classifier: a Fashion-MNIST run (the clean 28 px
  originals) or, closer to the scenes, a run on the items cut from them by their true boxes
  (``scripts/scene_item_crops.py``: tinted, on photos, partly hidden).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def miou(pred: torch.Tensor, true: torch.Tensor, k: int) -> tuple[float, np.ndarray]:
    cm = torch.bincount((true * k + pred).flatten(), minlength=k * k).reshape(k, k).double()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())
    return float(iou.mean()), iou.numpy()


def classifier_ceiling(run: Path, y: torch.Tensor, classes: list[str]) -> float:
    """Expected mIoU of PERFECT masks ``y`` ``[N, H, W]`` (0 background) whose items are classified with the
    test confusion matrix of the classification run ``run`` (every pixel of an item gets the item's class).
    The run's classes are matched to ``classes[1:]`` by name ("/" may be written "-", as in folder names)."""
    from visionsmith.engine.runfolder import read_json
    conf = np.asarray(json.loads((run / "eval.json").read_text())["confusion"], float)
    own = [c.replace("/", "-") for c in read_json(run / "run.json")["classes"]]
    order = [own.index(c.replace("/", "-")) for c in classes[1:]]
    conf = conf[np.ix_(order, order)]
    k = len(classes)
    share = conf / conf.sum(1, keepdims=True)                       # P(predicted c | true j)
    pixels = np.bincount(y.flatten().numpy(), minlength=k)[1:].astype(float)
    m = pixels[:, None] * share                                     # expected item pixels true j -> c
    tp = np.diag(m)
    iou = tp / (pixels + m.sum(0) - tp)
    return float((1.0 + iou.sum()) / k)  # background perfect too


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="?", help="a segmentation run on the scenes (data.name: scenes); "
                   "without it, only the --classifier ceiling (at 96 px)")
    p.add_argument("--classifier", type=Path, help="a classification run (its eval.json confusion): a Fashion-MNIST "
                   "one, or one on scripts/scene_item_crops.py crops")
    a = p.parse_args(argv)
    if a.run is None and a.classifier is None:
        p.error("give a RUN, a --classifier, or both")
    from visionsmith.data import scenes
    out = {}
    size = 96
    if a.run:
        from visionsmith.engine.build import load_trained
        cfg, model, classes, _ = load_trained(a.run)
        model.eval()
        size = cfg.data.image_size
    test = scenes.load_scenes(size=size)["test"]
    y = torch.as_tensor(np.asarray(test.masks)).long()
    if a.run:
        x = torch.as_tensor(np.asarray(test.images))
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + 100].float() / 255).argmax(1) for i in range(0, len(x), 100)])
        k = len(classes)
        fg_p, fg_t = pred > 0, y > 0
        yf = y[:, None].float()
        edge = (F.max_pool2d(yf, 3, 1, 1) != -F.max_pool2d(-yf, 3, 1, 1))[:, 0]
        out = {"as_is": miou(pred, y, k)[0],
               "foreground_iou": float((fg_p & fg_t).sum() / (fg_p | fg_t).sum()),
               "oracle_class": miou(torch.where(fg_p & fg_t, y, pred), y, k)[0],
               "oracle_edges": miou(torch.where(edge, y, pred), y, k)[0]}
    if a.classifier:
        out["perfect_masks_classifier_items"] = classifier_ceiling(a.classifier, y, list(test.classes))
    for key, v in out.items():
        print(f"{key:<32} {v:.4f}")
    return out


if __name__ == "__main__":
    main()
