"""Object detection end to end on small fashion-mnist scenes (real items on real photos, boxes from
the same generator as the masks): FCOS target assignment, the head's decoding, postprocess, training,
COCO evaluation, exact resume, DDP and the transfer modes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import visionsmith as vs
from visionsmith.config import ConfigError, load_config
from visionsmith.data.scenes import ensure_scenes
from visionsmith.engine.build import build_model
from visionsmith.engine.loop import fit
from visionsmith.losses.detection import dense_detection_kd, fcos_targets
from visionsmith.models.heads.detection import FCOSHead
from visionsmith.tasks import get_task

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "scenes-det.yaml"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def scenes_root():
    """A small COCO-format scenes folder (64 px; 192 train, 24 val, 24 test), read as users' COCO data."""
    return ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)


def _over(root, *extra):
    # A small, quick version of recipes/scenes-det.yaml
    return ["data.name=coco", f"data.root={root}", "data.image_size=64", "model.pretrained=false",
            "train.batch_size=16", "train.threads=1", "train.log_every=2", "train.eval_batch_size=24",
            "det.channels=32", "train.ema=false", *extra]


def _weights(run, name="last"):
    return load_file(str(Path(run) / "checkpoints" / f"{name}.safetensors"))


def test_fcos_assignment_by_hand():
    # Locations of one stride-8 level on a 32 px image: centres 4, 12, 20, 28 on each axis.
    pts = torch.tensor([[x, y] for y in (4.0, 12.0, 20.0, 28.0) for x in (4.0, 12.0, 20.0, 28.0)])
    strides = torch.full((16,), 8.0)
    ranges = torch.tensor([[0.0, float("inf")]]).expand(16, 2)
    big = torch.tensor([[0.0, 0.0, 32.0, 32.0]])      # centre (16, 16): centre region +-12 -> x, y in (4, 28)
    small = torch.tensor([[8.0, 8.0, 16.0, 16.0]])    # holds only the location (12, 12)
    lab, tgt = fcos_targets(pts, strides, torch.cat([big, small]), torch.tensor([3, 7]), ranges, radius=1.5)
    grid = lab.reshape(4, 4)
    # (12, 12) lies in both: the smaller box wins; the border row/column is outside big's centre region
    assert grid[1, 1] == 7 and torch.equal(tgt[5], small[0])
    assert (grid[1:3, 1:3] != -1).all() and grid[1, 2] == 3 and grid[2, 2] == 3
    assert (grid[0] == -1).all() and (grid[:, 0] == -1).all() and (grid[3] == -1).all()
    # a level whose range excludes the object's reach assigns nothing
    lab2, _ = fcos_targets(pts, strides, big, torch.tensor([3]), torch.tensor([[0.0, 8.0]]).expand(16, 2))
    assert (lab2 == -1).all()
    # no objects: all background
    lab3, _ = fcos_targets(pts, strides, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ranges)
    assert (lab3 == -1).all()


def test_head_decodes_boxes_around_its_locations():
    torch.manual_seed(0)
    head = FCOSHead([16, 24], [8, 16], num_classes=3, channels=16, convs=1)
    feats = [torch.randn(2, 16, 8, 8), torch.randn(2, 24, 4, 4)]
    out = head(feats)
    assert out.shape == (2, 8 * 8 + 4 * 4, 5 + 3)
    pts, st = head.points((64, 64))
    assert pts.shape == (80, 2) and torch.equal(st[:64], torch.full((64,), 8.0))
    # every box holds its own location (distances are >= 0), and its sides are multiples of the stride's scale
    x1y1, x2y2 = out[..., :2], out[..., 2:4]
    assert (x1y1 <= pts + 1e-5).all() and (x2y2 >= pts - 1e-5).all()


def test_loss_falls_and_a_batch_is_learned(scenes_root):
    # Overfit 16 real scenes for 60 steps: the loss falls and postprocess finds their boxes (mAP@.5 high).
    torch.manual_seed(0)
    cfg = load_config(RECIPE, _over(scenes_root))
    task = get_task(cfg)
    ds = task.build_datasets(0)["train"]
    model = build_model(cfg, len(ds.classes))
    from visionsmith.engine.build import build_transforms
    _, ev = build_transforms(cfg, model)
    batch = task.make_batch(ds, torch.arange(16), ev, None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = task.loss(model(batch["image"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    metric = task.metric(ds.classes)
    with torch.no_grad():
        metric.update(model(batch["image"]), batch)
    m = metric.compute()
    assert m["map50"] > 0.5 and m["n"] == 16


def test_postprocess_keeps_the_best_of_overlapping_boxes():
    cfg = load_config(RECIPE, ["det.max_detections=5"])
    task = get_task(cfg)
    k = 3
    out = torch.full((1, 8, 5 + k), -20.0)   # every score ~0
    boxes = torch.tensor([[10, 10, 30, 30], [11, 11, 31, 31], [50, 50, 60, 60], [10, 10, 30, 30.]])
    out[0, :4, :4] = boxes
    out[0, :4, 4] = 10.0                     # centre-ness ~1
    out[0, 0, 5 + 1], out[0, 1, 5 + 1], out[0, 2, 5 + 2], out[0, 3, 5 + 0] = 3.0, 2.0, 1.0, 0.5
    (res,) = task.postprocess(out, (64, 64))
    # box 1 overlaps box 0 in the same class (IoU 0.82): suppressed; box 3 is another class: kept
    assert res["labels"].tolist() == [1, 2, 0]
    assert torch.equal(res["boxes"], boxes[[0, 2, 3]])
    assert (res["scores"][:-1] >= res["scores"][1:]).all()
    # class-agnostic NMS: box 3 (another class on box 0's place) is suppressed too
    (agn,) = get_task(load_config(RECIPE, ["det.class_agnostic_nms=true"])).postprocess(out, (64, 64))
    assert agn["labels"].tolist() == [1, 2]


def test_detection_train_eval_and_cli(scenes_root, tmp_path, cli):
    cfg = load_config(RECIPE, _over(scenes_root, "train.epochs=3", "model.pretrained=true"))
    run = vs.train(cfg, out=tmp_path / "run")
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev) >= {"map", "map50", "map75", "ar100", "per_class_ap", "mean_iou_matched"}
    assert len(ev["per_class_ap"]) == 10 and ev["n"] == 24
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "detection" and info["test"]["map"] == ev["map"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["map50"] for r in rows if r["split"] == "val"]
    assert len(val) == 3 and all(0 <= v <= 1 for v in val)
    loss = [r["loss"] for r in rows if r["split"] == "train"]
    assert loss[-1] < 0.7 * loss[0]  # learning over 36 steps (the val mAP of so short a run is noise)
    # the COCO results file re-scores to the same mAP through pycocotools directly
    dets = json.loads((run / "detections.json").read_text())
    assert dets and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    s = np.load(run / "eval_samples.npz")
    assert s["true_counts"].sum() == len(s["true_boxes"]) and s["pred_counts"].sum() == len(s["pred_boxes"])
    out = cli("eval", run, "--split", "val").stdout
    assert "mAP" in out and "Ankle boot" in out


def test_detection_resume_is_bit_exact(scenes_root, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(RECIPE, _over(scenes_root, "train.epochs=2", "train.checkpoint_every=4", "train.ema=true",
                                    "train.ema_decay=0.9"))
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=6)
    fit(cfg, resume=part)
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_detection_kd_is_zero_at_the_teacher_and_pulls_the_student_to_it():
    g = torch.Generator().manual_seed(0)
    strides = torch.tensor([8.0] * 48 + [16.0] * 12)                       # N = 60 locations
    teacher = torch.cat([torch.rand(2, 60, 2, generator=g) * 40, torch.rand(2, 60, 2, generator=g) * 40 + 40,
                         torch.randn(2, 60, 1 + 10, generator=g) * 3], -1)   # [B, N, 5 + K]
    loss, parts = dense_detection_kd(teacher.clone(), teacher, 2.0, strides)
    assert abs(float(loss)) < 1e-6 and all(abs(v) < 1e-6 for v in parts.values())
    student = torch.zeros_like(teacher, requires_grad=True)
    opt = torch.optim.Adam([student], lr=0.5)
    first = float(dense_detection_kd(student, teacher, 2.0, strides)[0].detach())
    for _ in range(300):
        opt.zero_grad()
        dense_detection_kd(student, teacher, 2.0, strides)[0].backward()
        opt.step()
    last, parts = dense_detection_kd(student, teacher, 2.0, strides)
    assert float(last.detach()) < 0.02 * first
    sure = torch.sigmoid(teacher[..., 5:]).amax(-1) > 0.5                  # where the teacher sees an object
    assert (student[..., :4] - teacher[..., :4])[sure].abs().max() < 1.0   # its boxes are copied to < 1 px
    assert torch.equal(student[..., 5:][sure].argmax(-1), teacher[..., 5:][sure].argmax(-1))


def test_detection_distillation_trains_a_student_and_refuses_what_it_cannot(scenes_root, tmp_path):
    torch.set_num_threads(1)
    teacher = vs.train(load_config(RECIPE, _over(scenes_root, "train.max_steps=4")), out=tmp_path / "t", report=False)
    cfg = load_config(RECIPE, _over(scenes_root, "train.max_steps=4", "method=distill", f"distill.teacher={teacher}",
                                    "det.convs=1"))
    run = fit(cfg, out=tmp_path / "student")
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in r]
    assert rows and all(np.isfinite(r["loss_kd"]) and r["loss_kd"] > 0 and "kd_box" in r for r in rows)
    from visionsmith.engine.build import build_teacher
    from visionsmith.methods import build_method
    for extra, match in [("data.image_size=96", "image size"), ("det.head=faster_rcnn", "one-stage FCOS")]:
        bad = load_config(RECIPE, _over(scenes_root, "method=distill", f"distill.teacher={teacher}", extra))
        with pytest.raises(ConfigError, match=match):
            build_method(bad, build_model(bad, 10), get_task(bad), build_teacher(bad, CLASSES, torch.device("cpu")))


@pytest.mark.parametrize("mode", ["linear", "lora"])
def test_transfer_modes_train_the_head_and_freeze_the_backbone(scenes_root, mode):
    cfg = load_config(RECIPE, _over(scenes_root, f"adapt.mode={mode}", "adapt.lora.r=2"))
    model = build_model(cfg, 10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if n.startswith("head.")}
    assert head == {n for n, _ in model.named_parameters() if n.startswith("head.")}  # neck + towers train
    assert any(n.startswith("head.neck.") for n in head)
    backbone = trainable - head
    assert (not backbone) if mode == "linear" else (backbone and all("lora_" in n for n in backbone))


def test_detection_config_errors():
    with pytest.raises(ConfigError, match="not a detection dataset"):
        load_config(RECIPE, ["data.name=fashion_mnist"])
    with pytest.raises(ConfigError, match="det.nms_iou"):
        load_config(RECIPE, ["det.nms_iou=0"])
    with pytest.raises(ConfigError, match="method=adversarial is written for task classification, not detection"):
        load_config(RECIPE, ["method=adversarial"])


@pytest.mark.slow  # ~15-30 s; DDP itself is covered by tests/engine/test_ddp.py in the default run
def test_detection_under_ddp_matches_its_resume(scenes_root, tmp_path, torchrun_available):
    # Two gloo processes train a detection run; a crash after step 5 and `resume` give the same weights.
    import os
    import subprocess
    args = ["train", str(RECIPE), *_over(scenes_root, "train.max_steps=8", "train.checkpoint_every=3",
                                         "train.batch_size=8"), "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def torchrun(*a, extra=None):
        res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", *a],
                             capture_output=True, text=True, env={**env, **(extra or {})}, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    torchrun(*args, "--out", str(tmp_path / "full"))
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["env"]["world_size"] == 2 and info["status"] == "done" and info["task"] == "detection"
    torchrun(*args, "--out", str(tmp_path / "part"), extra={"VISIONSMITH_STOP_AFTER_STEPS": "5"})
    torchrun("resume", str(tmp_path / "part"), "--no-report")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
