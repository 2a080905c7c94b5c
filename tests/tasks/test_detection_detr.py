"""The DETR family from ``transformers`` as detection models (``models/detectors.py``): box and class
conversion to the shared output format, the model's own set loss learning a batch, a run that
fine-tunes a local ``save_pretrained`` folder on other classes and reloads, and the one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

import visionsmith as vs
from visionsmith.config import load_config
from visionsmith.data.scenes import ensure_scenes
from visionsmith.errors import UserError
from visionsmith.models.detectors import CENTRE_LOGIT, HFDetector, create_detector
from visionsmith.tasks import get_task

TINY = dict(num_queries=10, d_model=32, encoder_hidden_dim=32, decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64,
            decoder_ffn_dim=64, decoder_layers=1, num_denoising=10,
            backbone={"hidden_sizes": [16, 32, 64, 64], "embedding_size": 16})


def test_queries_become_pixel_boxes_a_neutral_centre_ness_and_class_logits():
    det = create_detector("rt_detr", num_classes=3, **TINY)
    boxes = torch.tensor([[[0.5, 0.25, 0.2, 0.1]]])  # cx, cy, w, h of a 64 (H) x 128 (W) image
    out = det._as_boxes(torch.tensor([[[0.0, 2.0, -1.0]]]), boxes, (64, 128))
    assert out.shape == (1, 1, 8)
    assert out[0, 0, :4].tolist() == pytest.approx([51.2, 12.8, 76.8, 19.2])
    assert out[0, 0, 4].item() == CENTRE_LOGIT and torch.sigmoid(out[0, 0, 4]).item() == 1.0
    assert out[0, 0, 5:].tolist() == [0.0, 2.0, -1.0]  # sigmoid models: their logits as they are
    # DETR's softmax over K classes + no-object: per-class logits whose sigmoid is the class probability
    soft = HFDetector(det.net, 3, [0.0] * 3, [1.0] * 3)._as_boxes(torch.tensor([[[1.0, 0.0, 0.0, 2.0]]]), boxes, (64, 128))
    p = torch.softmax(torch.tensor([1.0, 0.0, 0.0, 2.0]), 0)[:3]
    assert torch.sigmoid(soft[0, 0, 5:]).tolist() == pytest.approx(p.tolist(), rel=1e-5)


def test_the_set_loss_learns_a_batch():
    torch.manual_seed(0)
    det = create_detector("rt_detr", num_classes=2, **TINY)
    batch = {"image": torch.rand(2, 3, 64, 64), "boxes": [torch.tensor([[8.0, 8.0, 30.0, 40.0]]),
                                                          torch.tensor([[20.0, 4.0, 60.0, 28.0], [2.0, 40.0, 20.0, 62.0]])],
             "labels": [torch.tensor([0]), torch.tensor([1, 0])]}
    opt = torch.optim.AdamW(det.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        loss, out = det.loss_and_output(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert out.shape[0] == 2 and out.shape[2] == 5 + 2
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]  # 19.0 -> ~8.3 here


@pytest.fixture(scope="module")
def scenes_root():
    return ensure_scenes(canvas=64, n_train=96, n_val=16, n_test=16)


def test_a_saved_detector_fine_tunes_on_other_classes_and_reloads(scenes_root, tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "rtdetr-91"
    create_detector("rt_detr", num_classes=91, **TINY).net.save_pretrained(folder)  # e.g. a COCO checkpoint
    over = ["task=detection", "data.name=coco", f"data.root={scenes_root}", "data.image_size=64",
            "model.name=hf_detector", f"model.pretrained={folder}", "train.batch_size=16", "train.max_steps=3",
            "train.epochs=1", "train.threads=1", "train.ema=false", "train.eval_batch_size=16"]
    run = vs.train(None, overrides=over, out=tmp_path / "run", report=True)  # evaluates and reports
    ev = json.loads((run / "eval.json").read_text())
    assert {"map", "map50", "ar100"} <= set(ev) and 0 <= ev["map"] <= 1
    cfg = load_config(run / "config.yaml")
    task = get_task(cfg)
    again = task.build_model(10, pretrained=False)  # a run reloads the folder's architecture, 10 classes
    assert isinstance(again, HFDetector) and again.net.config.num_labels == 10
    img = next((scenes_root / "images" / "test").iterdir())
    res = vs.predict(run, [img], out=tmp_path / "pred")
    (p,) = res.predictions
    # each (query, class) pair is a candidate, as RT-DETR's own post-processing ranks them: <= 10 x 10
    assert (p.width, p.height) == (64, 64) and 0 < len(p.boxes) == len(p.labels) == len(p.scores) <= 100


def test_detr_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="model.pretrained=FOLDER"):
        create_detector("hf_detector", num_classes=3)
    with pytest.raises(UserError, match="no config.json"):
        create_detector("hf_detector", num_classes=3, folder=str(tmp_path))
    folder = tmp_path / "saved"
    create_detector("rt_detr", num_classes=3, **TINY).net.save_pretrained(folder)
    with pytest.raises(UserError, match="drop model.kwargs"):
        create_detector("hf_detector", num_classes=3, folder=str(folder), d_model=64)
    cfg = load_config(None, ["task=detection", "data.name=scenes", "model.name=rt_detr", "model.pretrained=true"])
    with pytest.raises(UserError, match="no weights for it install offline"):
        get_task(cfg).build_model(3)
