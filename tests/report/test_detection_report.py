"""The report of a detection run: COCO numbers, AP per class, precision-recall curves, the prediction grid and
the worst false positives and misses, from the files the detection task's test evaluation writes
(tasks/detection.py ``eval_artifacts``: pr_curves.npz, errors.json / errors.npz, eval_samples.npz).

One tiny real run (24 steps of FCOS on 64 px fashion-mnist scenes, ~20 s on one core) feeds every test; the
error lists are checked against an independent recomputation from detections.json and the test split.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from visionsmith.metrics.detection import RECALL_POINTS, DetectionMetric
from visionsmith.report import load_run, write_model_card, write_report
from visionsmith.report.detection import (
    error_gallery,
    image_summary,
    pr_figure,
    prediction_grid,
)
from visionsmith.report.sections import report_for

PNG = "data:image/png;base64,"
REPO = Path(__file__).resolve().parents[2]


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section class="card" id="{sid}">(.*?)</section>', page, flags=re.DOTALL)
    assert m, f"no section {sid}"
    return m.group(1)


def _self_contained(page: str) -> None:
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.IGNORECASE)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def _iou(a, b) -> float:
    """IoU of two xyxy boxes, written out (not ops.boxes)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def _det_master(tmp_path_factory):
    """A real detection run folder (train + official test evaluation + report) and its test split."""
    import visionsmith as vs
    from visionsmith.config import load_config
    from visionsmith.data.scenes import ensure_scenes
    from visionsmith.tasks import get_task

    torch.set_num_threads(1)
    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)  # shared with tests/tasks/test_detection.py
    cfg = load_config(REPO / "recipes" / "scenes-det.yaml", [
        "data.name=coco", f"data.root={root}", "data.image_size=64", "model.pretrained=true", "train.batch_size=16",
        "train.threads=1", "train.log_every=2", "train.eval_batch_size=24", "det.channels=32", "train.ema=false",
        "train.max_steps=24"])
    run = vs.train(cfg, out=tmp_path_factory.mktemp("det") / "scenes-det-tiny")
    test = get_task(cfg).build_datasets(cfg.seed)["test"]
    return run, test


@pytest.fixture
def det_run(_det_master, tmp_path) -> Path:
    """A fresh copy of the run folder (tests may break it)."""
    dst = tmp_path / _det_master[0].name
    shutil.copytree(_det_master[0], dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# what the evaluation writes


def test_pr_curves_npz_matches_the_evaluation(_det_master):
    run, test = _det_master
    ev = json.loads((run / "eval.json").read_text())
    z = np.load(run / "pr_curves.npz")
    k = len(ev["classes"])
    assert list(z["classes"]) == ev["classes"] == list(test.classes)
    assert z["precision"].shape == (k, 101) and np.allclose(z["recall"], np.linspace(0, 1, 101))
    assert z["ap"].shape == z["ap50"].shape == z["n_gt"].shape == (k,)
    n_gt = np.bincount(torch.cat(test.box_labels).numpy(), minlength=k)
    assert np.array_equal(z["n_gt"], n_gt)
    for c in range(k):
        if n_gt[c]:
            p = z["precision"][c]
            assert ((p >= 0) & (p <= 1)).all() and (np.diff(p) <= 1e-12).all()  # interpolated: non-increasing
            assert z["ap"][c] == pytest.approx(ev["per_class_ap"][c]) and z["ap50"][c] == pytest.approx(p.mean())
        else:
            assert (z["precision"][c] == -1).all() and z["ap"][c] == -1 and ev["per_class_ap"][c] is None
    assert z["ap50"][n_gt > 0].mean() == pytest.approx(ev["map50"])


def test_errors_are_what_they_claim(_det_master):
    """Recompute the false positives and misses from detections.json and the test split, independently."""
    run, test = _det_master
    errors = json.loads((run / "errors.json").read_text())
    dets = json.loads((run / "detections.json").read_text())
    gts = [[(b.tolist(), int(lab)) for b, lab in zip(bs, ls)] for bs, ls in zip(test.boxes, test.box_labels)]
    preds = [[] for _ in gts]
    for d in dets:
        x, y, w, h = d["bbox"]
        preds[d["image_id"]].append(([x, y, x + w, y + h], d["category_id"] - 1, d["score"]))
    thr, match = errors["min_score"], errors["match_iou"]
    assert (thr, match) == (0.3, 0.5) and errors["n_images"] == len(gts) == 24

    def false_pos(i, box, lab):
        return all(_iou(box, g) < match for g, gl in gts[i] if gl == lab)

    def missed(i, box, lab):
        return not any(_iou(box, p) >= match for p, pl, s in preds[i] if pl == lab and s >= thr)

    fps = [(i, p) for i in range(len(gts)) for p in preds[i] if false_pos(i, p[0], p[1])]
    misses = [(i, g) for i in range(len(gts)) for g in gts[i] if missed(i, *g)]
    assert errors["n_predictions"] == len(dets) and errors["n_ground_truth"] == sum(map(len, gts))
    assert errors["n_false_positives"] == len(fps) and errors["n_misses"] == len(misses)
    assert errors["n_false_positives_confident"] == sum(p[2] >= thr for _, p in fps)
    assert sum(errors["false_positive_kinds"].values()) == errors["n_false_positives_confident"]
    assert sum(errors["miss_kinds"].values()) == len(misses)
    assert fps and misses  # a 24-step model is wrong a lot: both lists are there to check

    listed = errors["false_positives"]
    assert 0 < len(listed) <= 12 and [f["score"] for f in listed] == sorted((f["score"] for f in listed), reverse=True)
    assert listed[0]["score"] == pytest.approx(max(p[2] for _, p in fps), abs=1e-4)  # the worst one leads
    for f in listed:
        i, box, lab = f["image"], f["box"], f["label"]
        assert false_pos(i, box, lab), f  # really matches no ground truth of its class at IoU >= 0.5
        assert f["class"] == test.classes[lab]
        assert any(pl == lab and abs(s - f["score"]) < 1e-3 and np.allclose(p, box, atol=0.02)
                   for p, pl, s in preds[i])  # a real detection
        best = max(gts[i], key=lambda g: _iou(box, g[0]), default=None)
        if best is None or _iou(box, best[0]) == 0:
            assert f["best_gt"] is None and f["kind"] == "background"
        else:
            assert f["best_gt"]["iou"] == pytest.approx(_iou(box, best[0]), abs=1e-3)
            other = max((_iou(box, g) for g, gl in gts[i] if gl != lab), default=0.0)
            same = max((_iou(box, g) for g, gl in gts[i] if gl == lab), default=0.0)
            expect = ("wrong_class" if other >= 0.5 else "localisation" if same >= 0.1 else
                      "wrong_class_and_localisation" if other >= 0.1 else "background")
            assert f["kind"] == expect, f

    listed = errors["misses"]
    assert 0 < len(listed) <= 12 and [m["area"] for m in listed] == sorted((m["area"] for m in listed), reverse=True)
    for m in listed:
        i, box, lab = m["image"], m["box"], m["label"]
        assert any(np.allclose(g, box, atol=0.02) and gl == lab for g, gl in gts[i]) and missed(i, box, lab)
        near = [(p, pl, s) for p, pl, s in preds[i] if _iou(box, p) >= 0.5]
        if m["kind"] == "low_score":
            assert any(pl == lab and s < thr for _, pl, s in near) and m["prediction"]["score"] < thr
        elif m["kind"] == "wrong_class":
            assert m["prediction"]["label"] != lab and m["prediction"]["score"] >= thr
        elif m["kind"] == "localisation":
            assert m["prediction"]["label"] == lab and 0.1 <= m["prediction"]["iou"] < 0.5
        else:
            assert m["kind"] == "missed"
        if m["prediction"] is not None:
            p = m["prediction"]
            assert p["iou"] == pytest.approx(_iou(box, p["box"]), abs=1e-3)


def test_errors_npz_holds_a_crop_of_each(_det_master):
    run, test = _det_master
    errors = json.loads((run / "errors.json").read_text())
    z = np.load(run / "errors.npz", allow_pickle=False)
    c = test.images.shape[1]
    for key, rows in (("fp", errors["false_positives"]), ("miss", errors["misses"])):
        n = len(rows)
        assert z[f"{key}_crops"].shape == (n, c, 96, 96) and z[f"{key}_crops"].dtype == np.uint8
        assert z[f"{key}_image"].tolist() == [r["image"] for r in rows]
        assert np.allclose(z[f"{key}_box"], [r["box"] for r in rows], atol=1e-3)
        assert z[f"{key}_kind"].tolist() == [r["kind"] for r in rows]
        for j, r in enumerate(rows):
            x1, y1, x2, y2 = r["window"]
            assert x1 <= r["box"][0] and y1 <= r["box"][1] and x2 >= r["box"][2] and y2 >= r["box"][3]
            assert x2 - x1 == pytest.approx(y2 - y1, abs=0.02)  # square
            # the crop is the window of the image: compare with a nearest-neighbour cut where it lies inside
            img = test.images[r["image"]].float()
            u = (np.arange(96) + 0.5) * (x2 - x1) / 96 + x1
            v = (np.arange(96) + 0.5) * (y2 - y1) / 96 + y1
            ok_u, ok_v = (u >= 1) & (u < img.shape[2] - 1), (v >= 1) & (v < img.shape[1] - 1)
            if ok_u.sum() > 8 and ok_v.sum() > 8:
                ref = img[:, v[ok_v].astype(int)][:, :, u[ok_u].astype(int)].numpy()
                crop = z[f"{key}_crops"][j][:, ok_v][:, :, ok_u].astype(float)
                assert np.abs(crop - ref).mean() < 40, (key, j)
    assert int(z["n_misses"]) == errors["n_misses"] and float(z["min_score"]) == 0.3


def test_pr_curves_by_hand():
    # class 0: two true boxes; detections scored 0.9 (false), 0.8 and 0.7 (true): precision 1/2 at recall 1/2,
    # 2/3 at recall 1 -> interpolated 2/3 everywhere; class 1: no ground truth -> -1; class 2: missed -> 0
    gt = {"boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.]]),
          "labels": torch.tensor([0, 0, 2])}
    pred = {"boxes": torch.tensor([[60, 60, 70, 70], [0, 0, 10, 10], [20, 20, 30, 30.]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])}
    m = DetectionMetric(["a", "b", "c"])
    m.update([pred], [gt])
    z = m.pr_curves()
    assert np.array_equal(z["recall"], RECALL_POINTS) and z["precision"].shape == (3, 101)
    assert np.allclose(z["precision"][0], 2 / 3) and (z["precision"][1] == -1).all() and (z["precision"][2] == 0).all()
    assert z["ap"].tolist() == pytest.approx([2 / 3, -1, 0]) and z["ap50"].tolist() == pytest.approx([2 / 3, -1, 0])
    assert z["n_gt"].tolist() == [2, 0, 1]
    assert m.compute()["per_class_ap"] == pytest.approx([2 / 3, None, 0.0])  # compute is unchanged
    empty = DetectionMetric(["a"])
    empty.update([pred | {"labels": torch.zeros(3, dtype=torch.int64)}], [{"boxes": torch.zeros(0, 4),
                                                                          "labels": torch.zeros(0, dtype=torch.int64)}])
    assert (empty.pr_curves()["precision"] == -1).all() and empty.pr_curves()["ap"].tolist() == [-1]


# ---------------------------------------------------------------------------------------------------------------
# the report


def test_detection_report(_det_master):
    run, _ = _det_master
    ev = json.loads((run / "eval.json").read_text())
    page = (run / "report.html").read_text(encoding="utf-8")  # written by vs.train
    _self_contained(page)
    assert f'<div class="big">{100 * ev["map"]:.2f}%</div>' in page and "mAP@[.5:.95] \u00b7 24 images" in page
    assert f'<div class="k">test mAP</div><div class="v">{100 * ev["map"]:.2f}%</div>' in page
    assert f'<div class="k">test mAP@.5</div><div class="v">{100 * ev["map50"]:.2f}%</div>' in page
    assert '<div class="k">matched IoU</div>' in page
    evaluation = _section(page, "evaluation")
    assert evaluation.count(PNG) == 1 and 'alt="AP per class"' in evaluation
    assert "AR@100" in evaluation and "<th class=num>AP@.5</th>" in evaluation and "Ankle boot" in evaluation
    pr = _section(page, "pr")
    assert pr.count(PNG) == 1 and 'alt="precision-recall curves per class"' in pr
    predictions = _section(page, "predictions")
    assert predictions.count(PNG) == 1 and "The first 16 test images" in predictions
    errors = _section(page, "errors")
    assert errors.count(PNG) == 2 and 'alt="worst false positives"' in errors and 'alt="worst misses"' in errors
    assert "Worst false positives" in errors and "<h3>Misses</h3>" in errors and "<table>" in errors
    # curves (loss, val, lr, throughput) + AP bars + PR + grid + 2 galleries
    assert page.count(PNG) == 9
    ids = re.findall(r'<section class="card" id="([^"]+)"', page)
    assert ids.index("evaluation") < ids.index("pr") < ids.index("predictions") < ids.index("errors")
    for needle in ("top-5", "macro-F1", "mIoU", "incomplete", "Problems reading", "could not be drawn"):
        assert needle not in page, needle
    files = _section(page, "files")
    assert all(f"<code>{f}</code>" in files for f in ("pr_curves.npz", "errors.npz", "eval_samples.npz"))
    card = (run / "model_card.md").read_text()
    assert "object detector for 10 classes" in card and "| class | AP@[.5:.95] | AP@.5 | test boxes |" in card
    assert f"mAP@[.5:.95] **{100 * ev['map']:.2f}%**" in card and "Incomplete" not in card


def test_missing_files_give_the_empty_state_not_a_crash(det_run):
    for name in ("pr_curves.npz", "errors.npz", "eval_samples.npz"):
        (det_run / name).unlink()
    page = write_report(det_run).read_text(encoding="utf-8")
    assert "could not be drawn" not in page
    for sid, name in (("pr", "pr_curves.npz"), ("errors", "errors.npz"), ("predictions", "eval_samples.npz")):
        sec = _section(page, sid)
        assert f'<div class="empty"><code>{name}</code> is missing' in sec and "visionsmith eval RUN" in sec, sid
        assert PNG not in sec and "not been evaluated" not in sec
    assert "<code>pr_curves.npz</code> is missing: no precision-recall curves and AP per class" in page
    evaluation = _section(page, "evaluation")
    assert evaluation.count(PNG) == 1 and "<th class=num>AP@.5</th>" not in evaluation  # eval.json still has AP
    assert page.count(PNG) == 5
    card = write_model_card(det_run).read_text()
    assert "| class | AP@[.5:.95] |" in card and "Incomplete run folder" in card


def test_an_unevaluated_run_says_so(det_run):
    for name in ("eval.json", "pr_curves.npz", "errors.npz", "eval_samples.npz", "errors.json", "detections.json"):
        (det_run / name).unlink()
    page = write_report(det_run).read_text(encoding="utf-8")
    assert "No test evaluation: eval.json is missing" in _section(page, "evaluation")
    assert "best val mAP@[.5:.95] (epoch" in page and '<div class="k">val mAP</div>' in page
    for sid in ("pr", "predictions", "errors"):
        assert "this run has not been evaluated yet" in _section(page, sid)
    assert "could not be drawn" not in page and page.count(PNG) == 4


def test_odd_files_are_noted_not_fatal(det_run):
    ev = json.loads((det_run / "eval.json").read_text())
    ev["per_class_ap"] = ev["per_class_ap"][:3]  # not one per class
    (det_run / "eval.json").write_text(json.dumps(ev))
    np.savez(det_run / "errors.npz", fp_crops=np.zeros((1, 3, 96, 96), np.uint8))  # no box arrays
    (det_run / "pr_curves.npz").write_bytes(b"not a zip")
    page = write_report(det_run).read_text(encoding="utf-8")
    assert "eval.json: &#x27;per_class_ap&#x27; does not have the expected form" in page
    assert "pr_curves.npz: could not be read" in page
    assert "No per-class AP in eval.json." in _section(page, "evaluation")
    assert "<code>errors.npz</code> holds no usable data" in _section(page, "errors")
    assert "<code>pr_curves.npz</code> is missing" not in page and PNG not in _section(page, "pr")
    assert "could not be drawn" not in page and _section(page, "predictions").count(PNG) == 1


def test_load_run_and_the_registry(det_run):
    data = load_run(det_run)
    assert data.task.name == "detection" and data.task.headline == "map"
    assert data.task.val_keys == ("map", "map50", "map75", "ar100")
    assert set(data.task.files) == {"eval_samples.npz", "pr_curves.npz", "errors.npz"}
    assert not data.missing and not data.problems and len(data.classes) == 10
    det = report_for("detection")
    assert [s.sid for s in det.sections] == ["evaluation", "pr", "predictions", "errors"]
    assert det.metric("map").label == "mAP@[.5:.95]" and det.metric("map50").short == "mAP@.5"


# ---------------------------------------------------------------------------------------------------------------
# the pictures on their own


def test_pictures_tolerate_edge_cases():
    box = np.array([[2.0, 2.0, 20.0, 20.0]])
    assert image_summary(box, np.array([1]), box, np.array([0.9]), np.array([1])) == (1, 1, 0)
    assert image_summary(box, np.array([1]), box, np.array([0.2]), np.array([1])) == (0, 1, 0)  # too weak
    assert image_summary(box, np.array([1]), box + 15, np.array([0.9]), np.array([1])) == (0, 1, 1)
    assert image_summary(np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) == (0, 0, 0)
    # no images, no predictions: boxes on grey; an image with no boxes at all
    z = {"true_boxes": np.array([[1.0, 1.0, 9.0, 9.0]]), "true_labels": np.array([0]), "true_counts": np.array([1, 0]),
         "pred_boxes": np.zeros((0, 4)), "pred_scores": np.zeros(0), "pred_labels": np.zeros(0, int),
         "pred_counts": np.array([0, 0])}
    assert prediction_grid(z, ["a"]) is not None
    assert prediction_grid({**z, "true_counts": np.zeros(0, int), "pred_counts": np.zeros(0, int)}, ["a"]) is None
    # a class without ground truth has no curve; none at all: nothing to draw
    assert pr_figure({"precision": np.full((2, 101), -1.0), "recall": RECALL_POINTS}, ["a", "b"]) is None
    assert pr_figure({"precision": np.vstack([np.full(101, 0.5), np.full(101, -1.0)]), "recall": RECALL_POINTS,
                      "ap": np.array([0.3, -1]), "ap50": np.array([0.5, -1])}, ["a", "b"]) is not None
    assert error_gallery({"fp_crops": np.zeros((0, 1, 96, 96), np.uint8)}, "fp", ["a"]) is None


def test_error_kinds_by_hand():
    from visionsmith.metrics.detection_errors import box_errors

    t = lambda *rows: torch.tensor(rows, dtype=torch.float32)
    gt_boxes = [t([0, 0, 20, 20], [40, 40, 60, 60]), t([0, 0, 30, 30])]
    gt_labels = [torch.tensor([0, 1]), torch.tensor([2])]
    preds = [{"boxes": t([0, 0, 20, 20], [0, 0, 20, 20], [40, 40, 52, 52], [80, 80, 90, 90], [0, 0, 20, 20],
                         [45, 45, 65, 65]),
              "scores": torch.tensor([0.9, 0.85, 0.8, 0.7, 0.2, 0.6]), "labels": torch.tensor([1, 2, 1, 0, 0, 0])},
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    e = box_errors(preds, gt_boxes, gt_labels, ["a", "b", "c"])
    fp = e["false_positives"]
    # the 0.85 "c" on the same spot as the 0.9 "b" is counted, not listed (one per place)
    assert [(f["score"], f["kind"]) for f in fp] == [(0.9, "wrong_class"), (0.8, "localisation"),
                                                     (0.7, "background"), (0.6, "wrong_class_and_localisation")]
    assert fp[0]["best_gt"] == {"box": [0, 0, 20, 20], "label": 0, "class": "a", "iou": 1.0} and fp[2]["best_gt"] is None
    assert fp[1]["same_class_iou"] == pytest.approx(0.36)
    assert e["n_false_positives"] == e["n_false_positives_confident"] == 5
    assert e["false_positive_kinds"] == {"wrong_class": 2, "localisation": 1, "wrong_class_and_localisation": 1,
                                         "background": 1}
    # misses, largest first: the lone box of image 1 (nothing there), "a" (found at 20% only), "b" (off)
    assert [(m["image"], m["class"], m["kind"]) for m in e["misses"]] == [(1, "c", "missed"), (0, "a", "low_score"),
                                                                        (0, "b", "localisation")]
    assert e["misses"][0]["prediction"] is None and e["misses"][1]["prediction"]["score"] == pytest.approx(0.2)
    assert e["misses"][2]["prediction"]["iou"] == pytest.approx(0.36) and e["n_misses"] == 3
    assert all(len(r["window"]) == 4 for r in fp + e["misses"])
