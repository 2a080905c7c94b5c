"""Where a scenes detection run's mAP goes: its test mAP beside what it would score with oracle or classifier help.

    python scripts/det_error_budget.py runs/scenes-det [--classifier runs/items]

- as is: the run's own detections (equals `visionsmith eval`);
- oracle class: every detection that overlaps a true box at IoU >= 0.5 takes the class of the box it overlaps most,
  then class-aware NMS again (the boxes and scores as predicted, the classes perfect);
- boxes only: one box per object (class-agnostic NMS, the score of its best class) given the oracle class: what the
  box half alone would score with a perfect classifier behind it;
- with ``--classifier`` (a classification run on `scripts/scene_item_crops.py` crops): detect, then classify: the
  class-agnostic boxes above, each crop classified by that run, one row per class scored box score x p(class).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_item_crops import crop_square  # noqa: E402


def score(preds: list[dict], truth: list[dict], classes: list[str]) -> dict:
    from visionsmith.metrics.detection import DetectionMetric
    m = DetectionMetric(classes)
    m.update(preds, truth)
    r = m.compute()
    return {k: round(float(r[k]), 4) for k in ("map", "map50", "map75", "ar100")}


def true_class(boxes: torch.Tensor, truth: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[P]`` bool: the box overlaps a true box at IoU >= 0.5, ``[P]`` that box's class where it does)."""
    from visionsmith.ops.boxes import box_iou
    if not len(truth["boxes"]) or not len(boxes):
        return torch.zeros(len(boxes), dtype=torch.bool), torch.zeros(len(boxes), dtype=torch.long)
    best, j = box_iou(boxes, truth["boxes"]).max(1)      # over the [P, T] IoUs
    return best >= 0.5, truth["labels"][j]


def best_hit(pred: dict, truth: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices into ``pred`` of the best-scoring detection at IoU >= 0.5 of each true box that has one,
    those true boxes' classes)."""
    from visionsmith.ops.boxes import box_iou
    if not len(truth["boxes"]) or not len(pred["boxes"]):
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    ok = box_iou(pred["boxes"], truth["boxes"]) >= 0.5                  # [P, T]
    s = torch.where(ok, pred["scores"][:, None], torch.full_like(ok, -1, dtype=torch.float))
    best, i = s.max(0)                                                   # per true box
    return i[best >= 0], truth["labels"][best >= 0]


def accuracy(labels: list[torch.Tensor], found: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Share of the found items (``best_hit``) whose detection has the item's class in ``labels``."""
    right = torch.cat([lab[i] == c for lab, (i, c) in zip(labels, found)])
    return round(float(right.float().mean()), 4)


def relabel(pred: dict, truth: dict, nms_iou: float) -> dict:
    """``pred``'s boxes that overlap a true box at IoU >= 0.5 take that box's class; then class-aware NMS."""
    from visionsmith.ops.boxes import batched_nms
    hit, cls = true_class(pred["boxes"], truth)
    labels = torch.where(hit, cls, pred["labels"])
    keep = batched_nms(pred["boxes"], pred["scores"], labels, nms_iou)
    return {"boxes": pred["boxes"][keep], "scores": pred["scores"][keep], "labels": labels[keep]}


def classify(images: torch.Tensor, boxes: list[dict], run: Path, names: list[str]) -> list[torch.Tensor]:
    """``[P_i, K]`` probabilities of the classes ``names`` for every box's square crop, from a classification run
    (its classes are the crop folders' names, sorted: matched to ``names`` by name, "/" written "-")."""
    from visionsmith.data.images import image_to_uint8
    from visionsmith.engine.build import load_trained
    cfg, model, classes, _ = load_trained(run)
    model.eval()
    order = [list(classes).index(n.replace("/", "-")) for n in names]
    s = int(cfg.data.image_size)
    crops = [image_to_uint8(Image.fromarray(crop_square(img.permute(1, 2, 0).numpy(), b)), s, False)
             for img, d in zip(images, boxes) for b in d["boxes"].tolist()]
    x = torch.stack(crops).float() / 255 if crops else torch.zeros(0, 3, s, s)
    with torch.no_grad():  # all crops of all images, 256 at a time, then split back per image
        chunks = [model(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)]
    probs = torch.cat(chunks) if chunks else torch.zeros(0, len(classes))
    return list(probs[:, order].split([len(d["boxes"]) for d in boxes]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a detection run on the scenes (data.name: scenes)")
    p.add_argument("--classifier", type=Path, help="a classification run on scripts/scene_item_crops.py crops")
    a = p.parse_args(argv)
    from visionsmith.data import scenes
    from visionsmith.engine.build import load_trained
    from visionsmith.ops.boxes import batched_nms
    from visionsmith.tasks.detection import decode
    cfg, model, classes, _ = load_trained(a.run)
    model.eval()
    s = int(cfg.data.image_size)
    test = scenes.load_scenes(size=s)["test"]
    truth = [{"boxes": b, "labels": lab - 1} for b, lab in zip(test.boxes, test.box_labels)]  # 0 = background
    x = torch.as_tensor(np.asarray(test.images))
    d = cfg.det
    with torch.no_grad():
        outs = torch.cat([model(x[i:i + 100].float() / 255) for i in range(0, len(x), 100)])
    preds = decode(outs, (s, s), d.score_threshold, d.nms_iou, d.max_detections, d.pre_nms, False)
    agnostic = decode(outs, (s, s), d.score_threshold, d.nms_iou, d.max_detections, d.pre_nms, True)
    res = {"as_is": score(preds, truth, classes),
           "oracle_class": score([relabel(p, t, d.nms_iou) for p, t in zip(preds, truth)], truth, classes),
           "boxes_only_oracle_class": score([relabel(p, t, d.nms_iou) for p, t in zip(agnostic, truth)], truth,
                                            classes)}
    found = [best_hit(p, t) for p, t in zip(agnostic, truth)]
    res["detector_accuracy_on_found_items"] = accuracy([p["labels"] for p in agnostic], found)
    if a.classifier:
        probs = classify(x, agnostic, a.classifier, classes)
        two = []
        for p, pr in zip(agnostic, probs):
            k = pr.shape[1]
            sc = (p["scores"][:, None] * pr).flatten()                    # [P * K], box-major
            boxes = p["boxes"].repeat_interleave(k, 0)
            labels = torch.arange(k).repeat(len(p["boxes"]))
            top = sc.argsort(descending=True)[:d.max_detections]
            keep = top[batched_nms(boxes[top], sc[top], labels[top], d.nms_iou)]
            two.append({"boxes": boxes[keep], "scores": sc[keep], "labels": labels[keep]})
        res["detect_then_classify"] = score(two, truth, classes)
        res["classifier_accuracy_on_found_items"] = accuracy([pr.argmax(1) for pr in probs], found)
    for key, v in res.items():
        print(f"{key:>40}: {v}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
