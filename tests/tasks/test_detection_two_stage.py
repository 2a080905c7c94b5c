"""Faster R-CNN with an FPN in plain torch (``models/heads/faster_rcnn.py``): the box coder, the anchors,
the two-stage loss learning a batch until the detections land on the objects, and a run through train,
COCO evaluation, reload, predict and ONNX export."""
from __future__ import annotations

import json

import pytest
import torch

import visionsmith as vs
from visionsmith import api
from visionsmith.config import load_config
from visionsmith.data.scenes import ensure_scenes
from visionsmith.models.heads.faster_rcnn import FasterRCNNHead, TwoStageDetector, anchors_for, decode, encode
from visionsmith.ops.boxes import box_iou
from visionsmith.tasks import get_task


def test_box_deltas_round_trip_and_mean_what_they_say():
    ref = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 8.0, 8.0]])
    gt = torch.tensor([[12.0, 18.0, 36.0, 70.0], [1.0, 2.0, 5.0, 12.0]])
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        torch.testing.assert_close(decode(ref, encode(ref, gt, w), w), gt)
    d = encode(ref[:1], torch.tensor([[20.0, 20.0, 40.0, 60.0]]), (1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.0, 0.0, 0.0]]))  # moved right by half its width


def test_anchors_tile_every_level_with_one_area_per_level():
    a = anchors_for([(2, 3), (1, 2)], [8, 16], 3.0, (0.5, 1.0, 2.0))
    assert a.shape == ((2 * 3 + 1 * 2) * 3, 4)
    centres = (a[:, :2] + a[:, 2:]) / 2
    torch.testing.assert_close(centres[:3], torch.tensor([[4.0, 4.0]] * 3))  # the first location, 3 shapes
    torch.testing.assert_close(centres[18:21], torch.tensor([[8.0, 8.0]] * 3))  # level 2 starts at stride 16
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    torch.testing.assert_close(area[:18], torch.full((18,), 24.0 ** 2))
    torch.testing.assert_close(area[18:], torch.full((6,), 48.0 ** 2))
    hw = (a[:3, 3] - a[:3, 1]) / (a[:3, 2] - a[:3, 0])
    torch.testing.assert_close(hw, torch.tensor([0.5, 1.0, 2.0]))  # height / width = the ratios


class _Pyramid(torch.nn.Module):
    """A small real backbone's pyramid (strides 8 and 16) for the head tests."""

    def __init__(self):
        super().__init__()
        self.s8 = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 2, 1),
                                      torch.nn.ReLU(), torch.nn.Conv2d(16, 24, 3, 2, 1), torch.nn.ReLU())
        self.s16 = torch.nn.Sequential(torch.nn.Conv2d(24, 32, 3, 2, 1), torch.nn.ReLU())

    def forward_intermediates(self, x, levels):
        a = self.s8(x)
        return [a, self.s16(a)]


def test_the_two_stage_loss_learns_a_batch_until_the_boxes_land_on_the_objects():
    torch.manual_seed(0)
    model = TwoStageDetector(_Pyramid(), FasterRCNNHead([24, 32], [8, 16], 3, channels=32, fc=64), [0, 1])
    x = torch.rand(2, 3, 64, 64)
    x[0, :, 10:40, 8:30] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # a red object
    x[1, :, 30:60, 20:56] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # a blue one
    batch = {"image": x, "boxes": [torch.tensor([[8.0, 10.0, 30.0, 40.0]]), torch.tensor([[20.0, 30.0, 56.0, 60.0]])],
             "labels": [torch.tensor([0]), torch.tensor([2])]}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss, _ = model.loss_and_output(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.2 * losses[0]  # 2.18 -> ~0.05 here
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 100 * 3, 5 + 3)
    task = get_task(load_config(None, ["task=detection", "data.name=scenes"]))
    for i, det in enumerate(task.postprocess(out, (64, 64))):
        top = det["scores"].argmax()
        assert det["labels"][top].item() == batch["labels"][i].item()
        assert box_iou(det["boxes"][top:top + 1], batch["boxes"][i]).item() > 0.6


def test_parity_matches_proposals_as_a_set():
    # Two runtimes may order near-tied proposals differently: the rows move as whole proposals (K rows each)
    from visionsmith.outputs.detection import align_proposals
    k = 3
    ref = torch.rand(2, 4 * k, 5 + k) * 50
    got = ref.view(2, 4, k, 5 + k)[:, [1, 0, 2, 3]].reshape(2, 4 * k, 5 + k).clone()  # proposals 0 and 1 swapped
    got[1, 3 * k:, :4] += 1.0  # image 1's last proposal is another box
    aligned, same = align_proposals(ref, got, k)
    assert same.tolist() == [[True] * 4, [True, True, True, False]]
    assert torch.equal(aligned[0], ref[0]) and torch.equal(aligned[1, :3 * k], ref[1, :3 * k])


@pytest.fixture(scope="module")
def scenes_root():
    return ensure_scenes(canvas=64, n_train=96, n_val=16, n_test=16)


def test_a_faster_rcnn_run_trains_evaluates_reloads_and_predicts(scenes_root, tmp_path):
    over = ["task=detection", "data.name=coco", f"data.root={scenes_root}", "data.image_size=64", "det.head=faster_rcnn",
            "model.name=mobilenetv2", "model.pretrained=false", "det.channels=32", "train.batch_size=16",
            "train.max_steps=4", "train.epochs=1", "train.threads=1", "train.ema=false", "train.eval_batch_size=16"]
    run = vs.train(None, overrides=over, out=tmp_path / "run", report=True)
    ev = json.loads((run / "eval.json").read_text())
    assert {"map", "map50", "ar100"} <= set(ev) and 0 <= ev["map"] <= 1
    assert (run / "detections.json").is_file()
    res = vs.predict(run, [next((scenes_root / "images" / "test").iterdir())], out=tmp_path / "pred")
    (p,) = res.predictions
    assert (p.width, p.height) == (64, 64) and len(p.boxes) == len(p.labels) <= 100
    # the fixed-shape path that ONNX export traces gives the same detections as the eager one
    from visionsmith.engine.build import load_trained
    _, model, _, _ = load_trained(run)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model.eval()(x)
        model.head.fixed_shapes = True
        torch.testing.assert_close(model(x), eager, atol=1e-4, rtol=0)
    # ... so it exports, and parity (proposals and final boxes) passes on the held-out scenes
    rec = api.export(run, out=tmp_path / "m.onnx", check=16).record
    fp32 = rec["parity"]["fp32"]
    assert fp32["proposal_agreement"] >= 0.99 and fp32["final_agreement"] >= 0.99 and fp32["max_box_diff_px"] <= 1e-2


def test_a_faster_rcnn_run_resumes_bit_exactly(scenes_root, tmp_path):
    """The sampled anchors and regions come from the loop's per-step generator, so a run stopped and
    resumed draws the same ones and ends with the same weights (EMA included)."""
    from safetensors.torch import load_file

    from visionsmith.engine.loop import fit
    torch.set_num_threads(1)
    cfg = load_config(None, ["task=detection", "data.name=coco", f"data.root={scenes_root}", "data.image_size=64",
                             "det.head=faster_rcnn", "model.name=mobilenetv2", "model.pretrained=false",
                             "det.channels=16", "train.batch_size=16", "train.epochs=2", "train.threads=1",
                             "train.checkpoint_every=3", "train.ema=true", "train.ema_decay=0.9",
                             "train.eval_batch_size=16"])
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=5)
    fit(cfg, resume=part)
    a, b = (load_file(str(r / "checkpoints" / "last.safetensors")) for r in (full, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
