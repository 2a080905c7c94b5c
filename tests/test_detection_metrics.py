"""DetectionMetric (COCO AP through pycocotools) on hand-built cases whose AP is derived by hand.

COCO's AP at one IoU threshold: sort all predictions of a class by score, walk down the list
(precision p_i, recall r_i after each), make precision non-increasing from the right, and average
it at the 101 recall points 0, 0.01, ..., 1 (the first prediction reaching that recall; 0 past the
last recall reached).  ``map`` averages that over the 10 thresholds 0.50, 0.55, ..., 0.95, where a
prediction matches a ground-truth box at IoU >= the threshold.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionsmith.metrics.detection import DetectionMetric, to_coco_results

CLASSES = ["cat", "dog", "bird"]


def pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def gt(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def compute(preds, targets, classes=CLASSES) -> dict:
    m = DetectionMetric(classes)
    m.update(preds, targets)
    return m.compute()


def random_image(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50 + 5], 1)
    return boxes, torch.randint(0, 2, (n,), generator=g)  # classes 0 and 1 only: "bird" has no ground truth


def test_perfect_predictions_score_one():
    preds, targets = [], []
    for s in range(4):
        boxes, labels = random_image(s)
        targets.append({"boxes": boxes, "labels": labels})
        preds.append({"boxes": boxes.clone(), "scores": torch.rand(len(boxes)), "labels": labels})
    r = compute(preds, targets)
    assert r["map"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0) and r["map75"] == pytest.approx(1.0)
    assert r["ar100"] == pytest.approx(1.0) and r["mean_iou_matched"] == pytest.approx(1.0)
    assert r["per_class_ap"][:2] == pytest.approx([1.0, 1.0]) and r["per_class_ap"][2] is None  # no bird
    assert r["n"] == 4 and r["n_matched"] == 24 and r["classes"] == CLASSES
    json.dumps(r)  # JSON-able, no NaN


def test_one_box_at_iou_below_and_at_point_six():
    """GT [0,0,10,10]; prediction [0,0,10,5.8]: IoU 0.58 passes 0.50 and 0.55 only -> AP 1 at those two
    thresholds, 0 at the other 8: map = 2/10.  At IoU exactly 0.6 the 0.60 threshold counts too
    (COCO matches at IoU >= threshold): map = 3/10."""
    r = compute([pred([[0, 0, 10, 5.8]], [0.9], [0])], [gt([[0, 0, 10, 10]], [0])])
    assert r["map50"] == pytest.approx(1.0) and r["map75"] == 0.0
    assert r["map"] == pytest.approx(0.2) and r["ar100"] == pytest.approx(0.2)
    assert r["mean_iou_matched"] == pytest.approx(0.58)
    r = compute([pred([[0, 0, 10, 6]], [0.9], [0])], [gt([[0, 0, 10, 10]], [0])])
    assert r["map"] == pytest.approx(0.3) and r["map50"] == pytest.approx(1.0)


def test_false_positive_ranked_first_halves_ap():
    """One GT, a false positive (score 0.9) above the true positive (0.8): after the FP p=0, r=0; after
    the TP p=1/2, r=1.  Made non-increasing from the right, precision is 1/2 at every recall point
    0..1, so AP = 0.5 at every threshold (the TP has IoU 1)."""
    r = compute([pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])], [gt([[0, 0, 10, 10]], [0])])
    assert r["map"] == pytest.approx(0.5) and r["map50"] == pytest.approx(0.5) and r["ar100"] == pytest.approx(1)


def test_false_positive_between_two_true_positives():
    """Two GT; TP 0.9, FP 0.8, TP 0.7 -> (p, r) = (1, .5), (.5, .5), (2/3, 1); non-increasing from the right:
    1, 2/3, 2/3.  Recall points 0.00..0.50 (51 of them) reach r=.5 at the first prediction: precision 1;
    points 0.51..1.00 (50) need the third: 2/3.  AP = (51 * 1 + 50 * 2/3) / 101 = 0.83498..."""
    r = compute([pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])],
                [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])])
    assert r["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["per_class_ap"][0] is None and r["per_class_ap"][1] == pytest.approx(r["map"])


def test_empty_predictions():
    r = compute([pred([], [], []), pred([], [], [])], [gt([[0, 0, 10, 10]], [0]), gt([], [])])
    assert r["map"] == 0.0 and r["map50"] == 0.0 and r["ar100"] == 0.0 and r["mean_iou_matched"] == 0.0
    assert r["per_class_ap"] == [0.0, None, None] and r["n"] == 2 and r["n_matched"] == 0


def test_images_without_ground_truth_are_negatives():
    target = gt([[0, 0, 10, 10]], [0])
    # a false positive on a negative image, scored above the true positive: AP 0.5 as above
    r = compute([pred([[0, 0, 10, 10]], [0.5], [0]), pred([[5, 5, 20, 20]], [0.9], [0])], [target, gt([], [])])
    assert r["map"] == pytest.approx(0.5)
    # scored below it, it comes after full recall and costs nothing
    r = compute([pred([[0, 0, 10, 10]], [0.5], [0]), pred([[5, 5, 20, 20]], [0.1], [0])], [target, gt([], [])])
    assert r["map"] == pytest.approx(1.0)
    # no ground truth anywhere: nothing is defined; the summary numbers are 0.0, the classes None
    r = compute([pred([[5, 5, 20, 20]], [0.9], [0])], [gt([], [])])
    assert r["map"] == 0.0 and r["per_class_ap"] == [None, None, None] and r["n"] == 1
    r = DetectionMetric(CLASSES).compute()
    assert r["n"] == 0 and r["map"] == 0.0


def ref_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_mean_iou_matched_against_direct_computation():
    preds, targets, ious = [], [], []
    for s in range(5):
        boxes, labels = random_image(s, n=8)
        g = torch.Generator().manual_seed(100 + s)
        noisy = boxes + torch.randn(boxes.shape, generator=g) * 4  # IoUs spread around the 0.5 cut
        scores = torch.rand(8, generator=g)
        plabels = torch.where(torch.rand(8, generator=g) < 0.2, 1 - labels, labels)  # some wrong classes
        preds.append({"boxes": noisy, "scores": scores, "labels": plabels})
        targets.append({"boxes": boxes, "labels": labels})
        used = set()
        for i in sorted(range(8), key=lambda i: -scores[i].item()):  # greedy, best score first
            best, best_j = -1.0, None
            for j in range(8):
                if j not in used and labels[j] == plabels[i]:
                    v = ref_iou(noisy[i].tolist(), boxes[j].tolist())
                    if v > best:
                        best, best_j = v, j
            if best >= 0.5:
                used.add(best_j)
                ious.append(best)
    r = compute(preds, targets)
    assert 0 < r["n_matched"] == len(ious) < 40
    assert r["mean_iou_matched"] == pytest.approx(float(np.mean(ious)), abs=1e-6)


def test_to_coco_results_loads_into_pycocotools():
    from pycocotools.coco import COCO
    p = pred([[1, 2, 11, 22], [0, 0, 5, 5]], [0.9, 0.4], [0, 2])
    res = to_coco_results([p, pred([], [], [])], [7, 8])
    assert res == [{"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0], "score": pytest.approx(0.9)},
                   {"image_id": 7, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.4)}]
    json.dumps(res)
    coco = COCO()
    coco.dataset = {"images": [{"id": 7}, {"id": 8}], "annotations": [],
                    "categories": [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]}
    coco.createIndex()
    assert len(coco.loadRes(res).getAnnIds()) == 2
    with pytest.raises(ValueError, match="2 predictions for 1 image ids"):
        to_coco_results([p, p], [1])


def test_bad_inputs_are_value_errors():
    m = DetectionMetric(CLASSES)
    with pytest.raises(ValueError, match="label 3, not a class index 0..2"):
        m.update([pred([[0, 0, 1, 1]], [0.5], [3])], [gt([], [])])
    with pytest.raises(ValueError, match="holds 1 boxes but 2 labels"):
        m.update([pred([], [], [])], [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(2, dtype=torch.long)}])
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        m.update([pred([], [], [])] * 2, [gt([], [])])


def test_reduce_without_a_process_group_is_a_no_op():
    m = DetectionMetric(CLASSES)
    m.update([pred([[0, 0, 10, 10]], [0.9], [0])], [gt([[0, 0, 10, 9]], [0])])
    before = m.compute()
    m.reduce()
    assert m.compute() == before


def _reduce_worker(rank, world, init_file, preds, targets, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    m = DetectionMetric(CLASSES)
    m.update(preds[rank::world], targets[rank::world])
    local = m.compute()
    m.reduce()
    m.reduce()  # a second call must not double-count
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"local": local, "reduced": m.compute()}, f)
    dist.destroy_process_group()


def test_reduce_across_two_gloo_processes(tmp_path):
    """Each rank sees every other image; after reduce both report what one process seeing all of them does."""
    import torch.multiprocessing as mp
    preds, targets = [], []
    for s in range(4):
        boxes, labels = random_image(s)
        targets.append({"boxes": boxes, "labels": labels})
        preds.append({"boxes": boxes + s, "scores": torch.rand(len(boxes)), "labels": labels})
    mp.spawn(_reduce_worker, args=(2, tmp_path / "init", preds, targets, tmp_path / "out"), nprocs=2)
    want = json.loads(json.dumps(compute(preds, targets)))
    for rank in range(2):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got["reduced"]["n"] == 4 and got["local"]["n"] == 2
        for key in ("map", "map50", "map75", "ar100", "mean_iou_matched", "n_matched"):
            assert got["reduced"][key] == pytest.approx(want[key], abs=1e-12), key  # image order differs: 0 2 1 3
        assert got["reduced"]["per_class_ap"][:2] == pytest.approx(want["per_class_ap"][:2], abs=1e-12)
        assert got["reduced"]["per_class_ap"][2] is None and got["local"]["map"] != want["map"]
