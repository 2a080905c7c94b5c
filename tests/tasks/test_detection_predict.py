"""A detection run outside the loop: `predict` (JSON and overlays with labelled boxes, boxes in the
input image's pixels), ONNX export with box decoding in the graph and parity on the final boxes, and
`serve` (boxes in the JSON answer)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from visionsmith import api
from visionsmith.config import load_config
from visionsmith.engine.build import load_trained
from visionsmith.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    """MobileNetV2 + FCOS on 64 px fashion-mnist scenes (COCO format), 36 steps: seconds on one core."""
    from visionsmith.data.scenes import ensure_scenes
    torch.set_num_threads(1)
    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)
    over = ["data.name=coco", f"data.root={root}", "data.image_size=64", "model.pretrained=true",
            "train.batch_size=16", "train.threads=1", "train.epochs=3", "train.eval_batch_size=24",
            "det.channels=32", "train.ema=false", "det.score_threshold=0.01"]
    return api.train(REPO / "recipes" / "scenes-det.yaml", over, out=tmp_path_factory.mktemp("det") / "run",
                     report=False)


@pytest.fixture(scope="module")
def test_split(det_run):
    cfg = load_config(det_run / "config.yaml")
    return get_task(cfg).build_datasets(cfg.seed)["test"]


def test_predict_boxes_are_the_models_in_the_input_pixels(det_run, test_split, tmp_path):
    # A test scene saved at 2x its size: predict's boxes are the model's own (decoded at 64 px) x 2.
    img = test_split.images[0].permute(1, 2, 0).numpy()
    Image.fromarray(img).resize((128, 128), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    Image.fromarray(img).save(tmp_path / "same.png")
    (tmp_path / "broken.png").write_bytes(b"no image")
    res = api.predict(det_run, [tmp_path / "same.png", tmp_path / "big.png", tmp_path / "broken.png"],
                      out=tmp_path / "out")
    assert [Path(p).name for p, _ in res.bad] == ["broken.png"]
    same, big = res.predictions
    cfg, model, classes, _ = load_trained(det_run)
    task = get_task(cfg)
    with torch.no_grad():
        (ref,) = task.postprocess(model(test_split.images[:1].float() / 255), (64, 64))
    assert same.labels == [classes[i] for i in ref["labels"].tolist()]
    np.testing.assert_allclose(same.boxes, ref["boxes"].numpy(), atol=1e-3)
    assert (same.width, same.height, big.width, big.height) == (64, 64, 128, 128)
    b = np.array(big.boxes).reshape(-1, 4)
    assert len(b) and (b >= 0).all() and (b[:, [0, 2]] <= 128).all() and (b[:, [1, 3]] <= 128).all()
    # files: an overlay of the input's size and a JSON per image, predictions.json with the bad file
    out = tmp_path / "out"
    assert Image.open(out / "big.overlay.png").size == (128, 128)
    js = json.loads((out / "same.json").read_text())
    assert [d["class"] for d in js["detections"]] == same.labels and js["width"] == 64
    allp = json.loads((out / "predictions.json").read_text())
    assert allp["task"] == "detection" and len(allp["predictions"]) == 2 and allp["bad"][0]["path"].endswith("broken.png")


def test_export_onnx_fp32_and_int8_with_parity_on_the_final_boxes(det_run, tmp_path):
    fp32 = api.export(det_run, out=tmp_path / "m.onnx", check=24)
    par = fp32.record["parity"]["fp32"]
    assert par["max_box_diff_px"] <= 1e-2 and par["final_agreement"] >= 0.99 and "map_ref" in par
    assert abs(par["map"] - par["map_ref"]) < 1e-3
    int8 = api.export(det_run, int8="static", out=tmp_path / "m.int8.onnx", check=24, calib=32, max_drop=100)
    assert "map_drop_points" in int8.record["parity"]["int8"]
    # the ONNX file predicts through the same code: the same detections as the run
    img = tmp_path / "x.png"
    cfg = load_config(det_run / "config.yaml")
    Image.fromarray(get_task(cfg).build_datasets(0)["test"].images[1].permute(1, 2, 0).numpy()).save(img)
    a, b = api.predict(det_run, [img]).predictions[0], api.predict(fp32.path, [img]).predictions[0]
    assert a.labels == b.labels and np.allclose(a.boxes, b.boxes, atol=1e-2)


def test_serve_answers_with_boxes(det_run, test_split, tmp_path):
    from visionsmith.serve import ServeOptions, create_app, load_backend
    Image.fromarray(test_split.images[2].permute(1, 2, 0).numpy()).save(tmp_path / "s.png")
    data = (tmp_path / "s.png").read_bytes()
    app = create_app([load_backend(f"det={det_run}")], ServeOptions(max_images=4))
    with TestClient(app) as c:
        (m,) = c.get("/v1/models").json()["models"]
        assert m["task"] == "detection" and m["postprocess"]["nms_iou"] == 0.6
        r = c.post("/v1/models/det:predict", json={"image": base64.b64encode(data).decode()})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    ref = api.predict(det_run, [tmp_path / "s.png"]).predictions[0]
    assert [d["class"] for d in p["detections"]] == ref.labels
    assert np.allclose([d["box"] for d in p["detections"]], np.round(ref.boxes, 2), atol=0.02)
