"""The report of a segmentation run: the task picks the headline, the key numbers, the validation
table and curve, and its own sections (prediction grid, IoU per class, pixel confusion matrix).

The run folder is built by hand in the format the engine writes (tasks/segmentation.py,
metrics/segmentation.py): synthetic scenes of a few classes on a textured background, predictions
that are the true masks with realistic faults (eroded edges, one class mistaken for another, stray
blobs), and eval.json computed from them with the real metric code.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from visionsmith.metrics import SegmentationMetrics
from visionsmith.report import (
    load_run,
    render_model_card,
    write_model_card,
    write_report,
)
from visionsmith.report.sections import TaskSpec, report_for

PNG = "data:image/png;base64,"
CLASSES = ["background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
ABSENT = 9  # "Bag": in no mask and no prediction -> no IoU (None)
TINTS = np.random.default_rng(7).uniform(0.25, 1.0, (len(CLASSES), 3))


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with 1-3 items (ellipses and boxes): uint8 image [3, S, S], mask [S, S]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.35 + 0.25 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) + rng.normal(0, 0.05, (size, size))
    image = np.stack([base * rng.uniform(0.6, 1.0) for _ in range(3)])
    mask = np.zeros((size, size), np.uint8)
    present = [c for c in range(1, len(CLASSES)) if c != ABSENT]
    for c in rng.choice(present, size=int(rng.integers(1, 4)), replace=False):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.12, 0.25, 2)
        region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1 if c % 2 else \
            (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx * 0.8)
        mask[region] = c
        shade = 0.8 + 0.2 * np.sin(25 * (xx + yy))
        image[:, region] = (TINTS[c][:, None] * shade[region])
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def _predict(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The true mask with faults: eroded item edges, Shirt often read as T-shirt/top, stray blobs."""
    pred = mask.copy()
    edge = np.zeros_like(mask, bool)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    pred[edge & (rng.random(mask.shape) < 0.7)] = 0
    if rng.random() < 0.7:
        pred[mask == 7] = 1  # Shirt -> T-shirt/top
    if rng.random() < 0.5:
        pred[mask == 5] = 3  # Coat -> Pullover
    y, x = rng.integers(4, mask.shape[0] - 10, 2)
    pred[y:y + 6, x:x + 6] = rng.choice([2, 4, 8])
    return pred


def make_seg_run(run_dir: Path, n_test: int = 24, size: int = 64, epochs: int = 5, samples: bool = True) -> dict:
    """Write a finished segmentation run folder; returns its eval.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    scenes = [_scene(rng, size) for _ in range(n_test)]
    images = np.stack([s[0] for s in scenes])
    masks = np.stack([s[1] for s in scenes])
    preds = np.stack([_predict(rng, m) for m in masks])
    masks[3, :3, :] = 255  # a few unscored pixels (e.g. a padded border)
    masks[3, :, :3] = 255

    config = {"name": "scenes-seg-tiny", "seed": 0, "task": "segmentation", "method": "supervised",
              "model": {"name": "mobilenetv2", "pretrained": True, "in_chans": 3},
              "data": {"name": "scenes", "image_size": size, "classes": None, "val_fraction": 0.1},
              "seg": {"head": "fpn", "channels": 96, "dice_weight": 0.0},
              "train": {"epochs": epochs, "batch_size": 32, "optimizer": "adamw", "lr": 0.002}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    lines, step = [], 0
    for epoch in range(epochs):
        for _ in range(10):
            step += 5
            lines.append({"split": "train", "step": step, "epoch": epoch + step % 50 / 50,
                          "loss": 1.6 * np.exp(-step / 80) + 0.2 + 0.05 * rng.random(), "lr": 0.002 * (1 - step / 250),
                          "img_per_s": 55 + 5 * rng.random(), "time": 2.0 * step})
        q = 1 - np.exp(-(epoch + 1) / 2)
        lines.append({"split": "val", "step": step, "epoch": epoch, "miou": 0.2 + 0.45 * q,
                      "pixel_acc": 0.84 + 0.12 * q, "mean_acc": 0.3 + 0.45 * q, "fwiou": 0.75 + 0.15 * q})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    metric = SegmentationMetrics(len(CLASSES), 255, CLASSES)
    metric.update(torch.from_numpy(preds).long(), torch.from_numpy(masks).long())
    ev = {**metric.compute(), "n": n_test, "split": "test", "weights": "best", "eval_s": 0.4,
          "eval_img_per_s": 60.0}
    (run_dir / "eval.json").write_text(json.dumps(ev))
    if samples:
        np.savez_compressed(run_dir / "eval_samples.npz", images=images[:16], masks=masks[:16], preds=preds[:16])

    run = {"name": "scenes-seg-tiny", "status": "done", "seed": 0, "task": "segmentation", "method": "supervised",
           "adapt": "full", "created": "2025-01-01T12:00:00+00:00",
           "git": {"rev": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
           "env": {"python": "3.11", "torch": torch.__version__, "device": "cpu"},
           "params": {"total": 2695339, "trainable": 2695339, "trainable_pct": 100.0}, "classes": CLASSES,
           "timing": {"train_s": 500.0, "train_img_per_s": 56.0, "eval_s": 0.4, "eval_img_per_s": 60.0},
           "test": {k: ev[k] for k in ("miou", "pixel_acc", "mean_acc", "fwiou")},
           "command": "visionsmith train recipes/scenes-seg.yaml"}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    return ev


@pytest.fixture(scope="module")
def _seg_master(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("seg") / "scenes-seg-tiny"
    return d, make_seg_run(d)


@pytest.fixture
def seg_run(_seg_master, tmp_path) -> tuple[Path, dict]:
    """A fresh copy of the hand-made segmentation run folder (tests may break it) and its eval.json."""
    src, ev = _seg_master
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst, ev


def _self_contained(page: str) -> None:
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "<script" not in page.lower() and "<link" not in page.lower()


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section class="card" id="{sid}">(.*?)</section>', page, flags=re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def test_segmentation_report(seg_run):
    run_dir, ev = seg_run
    assert ev["per_class"]["iou"][ABSENT] is None and 0.3 < ev["miou"] < 0.9  # the fixture is realistic
    page = write_report(run_dir).read_text(encoding="utf-8")
    _self_contained(page)
    # headline: the task's metric and label
    assert f'<div class="big">{100 * ev["miou"]:.2f}%</div>' in page
    assert "mIoU \u00b7 24 images" in page
    # key numbers: the task's test keys
    for title, key in [("test mIoU", "miou"), ("test pixel acc", "pixel_acc"), ("test mean acc", "mean_acc"),
                       ("test fwIoU", "fwiou")]:
        assert f'<div class="k">{title}</div><div class="v">{100 * ev[key]:.2f}%</div>' in page
    # the validation table: the task's val keys
    training = _section(page, "training")
    assert re.search(r"<th class=num>mIoU</th><th class=num>pixel acc</th><th class=num>mean acc</th>"
                     r"<th class=num>fwIoU</th>", training)
    # the segmentation sections, with their pictures
    evaluation = _section(page, "evaluation")
    assert evaluation.count(PNG) == 2  # IoU bars, confusion matrix
    assert 'alt="IoU per class"' in evaluation and 'alt="pixel confusion matrix"' in evaluation
    assert "Most confused pairs" in evaluation and "Shirt \u2192 T-shirt/top" in evaluation
    for name in CLASSES:
        assert esc_name(name) in evaluation
    assert "frequency-weighted IoU" in evaluation and "over 10 of 11 classes" in evaluation
    predictions = _section(page, "predictions")
    assert predictions.count(PNG) == 1 and "The first 16 test images" in predictions
    assert "hatched grey pixels are not scored" in predictions
    # curves (loss, val, lr, throughput) + bars + confusion + grid
    assert page.count(PNG) == 7
    # nothing of classification
    for needle in ("top-5", "macro-F1", 'id="mistakes"', 'id="published"', "Most confident mistakes",
                   "precision", "eval_worst.npz", "published.json", "accuracy (top-1)"):
        assert needle not in page, needle
    assert "incomplete" not in page and "Problems reading" not in page and "could not be drawn" not in page
    assert "<code>eval_samples.npz</code>" in _section(page, "files")


def esc_name(name: str) -> str:
    import html
    return html.escape(name)


def test_a_folder_without_eval_samples_still_renders_and_says_why(seg_run):
    run_dir, ev = seg_run
    (run_dir / "eval_samples.npz").unlink()
    page = write_report(run_dir).read_text(encoding="utf-8")
    predictions = _section(page, "predictions")
    assert "<code>eval_samples.npz</code> is missing" in predictions and "visionsmith eval RUN" in predictions
    assert PNG not in predictions
    assert "<code>eval_samples.npz</code> is missing: no test images with their true and predicted masks" in page
    assert page.count(PNG) == 6 and f"{100 * ev['miou']:.2f}%" in page and "could not be drawn" not in page


def test_a_half_written_segmentation_run_leads_with_the_best_val_miou(seg_run):
    run_dir, _ = seg_run
    for name in ("eval.json", "eval_samples.npz", "run.json"):
        (run_dir / name).unlink()
    val = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    best = max(val, key=lambda r: r["miou"])
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert f"{100 * best['miou']:.2f}%" in page
    assert f"best val mIoU (epoch {best['epoch']}) \u00b7 no test evaluation yet" in page
    assert '<div class="k">val mIoU</div>' in page and f"best epoch {best['epoch']}" in page
    assert "No test evaluation: eval.json is missing" in _section(page, "evaluation")
    assert "this run has not been evaluated yet" in _section(page, "predictions")
    assert "top-5" not in page and page.count(PNG) == 4  # the curves


def test_the_task_comes_from_run_json_when_the_config_cannot_be_read(seg_run):
    run_dir, ev = seg_run
    (run_dir / "config.yaml").write_text("task: [unclosed\n")
    data = load_run(run_dir)
    assert data.task.name == "segmentation" and data.task.headline == "miou"
    page = write_report(run_dir).read_text()
    assert "config.yaml: could not be parsed" in page and 'id="predictions"' in page
    assert f"{100 * ev['miou']:.2f}%" in page and "top-5" not in page


def test_load_run_reads_the_task_files(seg_run):
    data = load_run(seg_run[0])
    assert data.task.val_keys == ("miou", "pixel_acc", "mean_acc", "fwiou")
    assert set(data.files) == {"config.yaml", "run.json", "metrics.jsonl", "eval.json", "eval_samples.npz"}
    z = data.arrays["eval_samples.npz"]
    assert z["images"].shape == (16, 3, 64, 64) and z["masks"].shape == z["preds"].shape == (16, 64, 64)
    assert not data.missing and not data.problems and data.classes == CLASSES


def test_odd_segmentation_fields_are_dropped_not_fatal(seg_run):
    run_dir, _ = seg_run
    ev = json.loads((run_dir / "eval.json").read_text())
    ev["per_class"]["iou"] = ev["per_class"]["iou"][:3]  # lengths disagree
    ev["miou"] = "high"
    (run_dir / "eval.json").write_text(json.dumps(ev))
    page = write_report(run_dir).read_text()
    assert "eval.json: &#x27;per_class&#x27; does not have the expected form" in page
    assert "eval.json: &#x27;miou&#x27; does not have the expected form" in page
    assert "No per-class IoU in eval.json." in page and "could not be drawn" not in page
    assert 'alt="pixel confusion matrix"' in page and 'id="predictions"' in page


def test_segmentation_model_card(seg_run):
    run_dir, ev = seg_run
    card = write_model_card(run_dir).read_text()
    assert "semantic segmentation model for 11 classes" in card and f"mIoU **{100 * ev['miou']:.2f}%**" in card
    assert "| class | IoU | pixel accuracy | pixels |" in card and "| Bag | \u2014 |" in card
    assert "11 per-pixel class logits" in card and "top-5" not in card and "Incomplete" not in card


def test_the_section_registry():
    seg = report_for("segmentation")
    assert [s.sid for s in seg.sections] == ["evaluation", "predictions"] and seg.headline == "miou"
    cls = report_for("classification")
    assert [s.sid for s in cls.early()] == ["evaluation"] and [s.sid for s in cls.late()] == ["mistakes", "published"]
    # a task with no report file: its test metrics as a plain table
    other = report_for("depth", spec=TaskSpec("depth", "map", "mAP", test_keys=("map",)))
    assert [s.sid for s in other.sections] == ["evaluation"] and other.metric("map").label == "map"


def test_an_unknown_task_is_shown_generically(seg_run):
    run_dir, _ = seg_run
    for name in ("config.yaml", "run.json"):
        p = run_dir / name
        p.write_text(p.read_text().replace("segmentation", "depth"))
    ev = json.loads((run_dir / "eval.json").read_text())
    ev["map"] = 0.41
    (run_dir / "eval.json").write_text(json.dumps(ev))
    run = json.loads((run_dir / "run.json").read_text())
    run["test"] = {"map": 0.41}
    (run_dir / "run.json").write_text(json.dumps(run))
    page = write_report(run_dir).read_text()
    assert "task &#x27;depth&#x27; is not known to this visionsmith" in page
    assert "41.00%" not in page and "0.41" in page and "has no report sections yet" in page
    assert "could not be drawn" not in page
    assert render_model_card(load_run(run_dir))  # the card too


def test_a_real_tiny_segmentation_run_renders(tmp_path):
    """3 steps of a real segmentation run on small scenes (~10 s): the engine's files feed these sections."""
    import visionsmith as vs
    from visionsmith.config import load_config
    from visionsmith.data.scenes import ensure_scenes

    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)  # shared with tests/tasks/test_segmentation.py
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "recipes" / "scenes-seg.yaml", [
        "data.name=coco", f"data.root={root}", "data.image_size=64", "model.name=mobilenetv2", "model.pretrained=false",
        "train.batch_size=16", "train.threads=1", "train.log_every=1", "train.eval_batch_size=24", "seg.channels=16",
        "train.max_steps=3"])
    run = vs.train(cfg, out=tmp_path / "run")
    page = (run / "report.html").read_text(encoding="utf-8")
    _self_contained(page)
    assert "mIoU \u00b7 24 images" in page and "test mIoU" in page
    assert _section(page, "evaluation").count(PNG) == 2 and _section(page, "predictions").count(PNG) == 1
    assert "Ankle boot" in page and "top-5" not in page and 'id="mistakes"' not in page
    assert "incomplete" not in page and "Problems reading" not in page and "could not be drawn" not in page
    assert "semantic segmentation model" in (run / "model_card.md").read_text()
