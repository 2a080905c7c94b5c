"""ONNX export: parity with PyTorch on two architectures, the file's contract, INT8 within bound."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from visionsmith import api
from visionsmith.engine.build import build_transforms, load_trained
from visionsmith.export import OnnxClassifier, export_onnx, read_metadata


def _pixel_model(run):
    """The run's model (it takes [0, 1] pixels: the exported graph's input), its eval transform, classes."""
    cfg, model, classes, _ = load_trained(run)
    _, tf = build_transforms(cfg, model)
    return model.eval(), tf, classes


@pytest.mark.parametrize("run_fixture", ["digits_run", "resnet8_run"])
def test_fp32_export_matches_pytorch_and_keeps_the_contract(run_fixture, request):
    run = request.getfixturevalue(run_fixture)
    res = export_onnx(run, check=200)
    assert res.path == run / "export" / "model.onnx" and res.path.is_file()
    fp32 = res.record["parity"]["fp32"]
    assert fp32["n"] == 200 and fp32["max_abs_diff"] < 1e-4 and fp32["top1_agreement"] == 1.0
    assert fp32["acc"] == fp32["acc_ref"]

    # The contract the serving code relies on: input `pixels` [N, C, S, S] with a dynamic N,
    # output `logits` [N, K], metadata under `visionsmith`.
    pm, tf, classes = _pixel_model(run)
    g = onnx.load(str(res.path)).graph
    assert [i.name for i in g.input] == ["pixels"] and [o.name for o in g.output] == ["logits"]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [tf.in_chans, tf.image_size, tf.image_size]
    meta = read_metadata(res.path)
    assert meta["classes"] == classes and meta["image_size"] == tf.image_size and meta["in_chans"] == tf.in_chans
    assert meta["task"] == "classification" and meta["int8"] is False and meta["opset"] == 20
    assert meta["run"] == str(run)
    assert {o.version for o in onnx.load(str(res.path)).opset_import if o.domain == ""} == {20}

    clf = OnnxClassifier(res.path)
    for batch in (1, 5):  # batch sizes the export never saw
        x = torch.rand(batch, tf.in_chans, tf.image_size, tf.image_size)
        with torch.no_grad():
            ref = pm(x).numpy()
        assert np.abs(clf.predict_pixels(x) - ref).max() < 1e-4
    record = json.loads((run / "export" / "export.json").read_text())["exports"]["export/model.onnx"]
    assert record["parity"]["fp32"]["max_abs_diff"] == fp32["max_abs_diff"]


def test_other_opset_is_written_as_asked(digits_run, tmp_path):
    res = export_onnx(digits_run, opset=18, out=tmp_path / "op18.onnx", check=50)
    assert {o.version for o in onnx.load(str(res.path)).opset_import if o.domain == ""} == {18}
    assert read_metadata(res.path)["opset"] == 18 and res.record["opset"] == 18


def test_int8_static_on_digits_stays_within_the_accuracy_bound(digits_run):
    fp32 = export_onnx(digits_run, check=400).path
    res = export_onnx(digits_run, int8="static", calib=128, check=400, max_drop=1.0)
    assert res.path == digits_run / "export" / "model.int8.onnx"
    int8 = res.record["parity"]["int8"]
    assert int8["acc_drop_points"] <= 1.0 and int8["acc"] > 0.9
    assert int8["top1_agreement"] >= 0.97
    q = res.record["quantization"]
    assert q["mode"] == "static" and q["format"] == "QDQ" and q["calib_images"] == 128
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert res.path.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights: ~1/4 of float32
    assert read_metadata(res.path)["int8"] is True
    # both exports are recorded side by side
    exports = json.loads((digits_run / "export" / "export.json").read_text())["exports"]
    assert {"export/model.onnx", "export/model.int8.onnx"} <= exports.keys()


def test_int8_dynamic_fallback_runs_and_reports(digits_run, tmp_path):
    res = export_onnx(digits_run, int8="dynamic", out=tmp_path / "dyn.onnx", check=200, max_drop=5.0)
    assert res.path.is_file() and res.record["quantization"]["mode"] == "dynamic"
    int8 = res.record["parity"]["int8"]
    assert int8["n"] == 200 and 0 <= int8["top1_agreement"] <= 1 and int8["acc_drop_points"] <= 5.0


def test_predict_with_onnx_equals_predict_with_the_checkpoint(digits_run, tmp_path):
    from PIL import Image
    from visionsmith.data import build_datasets
    cfg, _, _, _ = load_trained(digits_run)
    test = build_datasets(cfg.data, cfg.seed)["test"]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):  # 8x8 gray as the data, and upscaled RGB / non-square versions a user would send
        a = test.images[i, 0].numpy()
        Image.fromarray(a).save(folder / f"{i:02d}.png")
        if i < 4:
            rgb = np.stack([a, a // 2, a], -1).repeat(5, 0).repeat(4, 1)
            Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{i:02d}-rgb.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    onnx_path = export_onnx(digits_run, check=100).path
    a = api.predict(digits_run, [folder], topk=3)
    b = api.predict(onnx_path, [folder], topk=3)
    assert a.bad == b.bad and len(a.bad) == 1
    assert [p.path for p in a.predictions] == [p.path for p in b.predictions] and len(a.predictions) == 16
    for pa, pb in zip(a.predictions, b.predictions):
        assert [c for c, _ in pa.topk] == [c for c, _ in pb.topk]
        assert max(abs(qa - qb) for (_, qa), (_, qb) in zip(pa.topk, pb.topk)) < 1e-4


def test_cli_export_prints_the_parity_table(digits_run, cli, tmp_path):
    out = tmp_path / "cli.int8.onnx"
    res = cli("export", digits_run, "--format", "onnx", "--int8", "--calib", "64", "--check", "100", "--out", out)
    assert "top-1 agree" in res.stdout and "onnx int8" in res.stdout and "passed" in res.stdout
    assert out.is_file() and read_metadata(out)["int8"] is True
    pred = cli("predict", out, tmp_path, "--json", check=False)  # no images there: exit 1, no crash
    assert pred.returncode == 1 and "no image files" in pred.stderr


def test_mobilenetv2_export_parity(tmp_path):
    """A third architecture (depthwise convs, ReLU6, BatchNorm), not pretrained, 32 px, a few steps."""
    digits = Path(__file__).resolve().parents[2] / "recipes" / "digits.yaml"
    run = api.train(digits, overrides=["model.name=mobilenetv2", "model.in_chans=3", "data.image_size=32",
                                       "train.epochs=1", "train.max_steps=10"], out=tmp_path / "mnv2", report=False)
    res = export_onnx(run, int8="static", calib=64, check=200, max_drop=100.0)
    assert res.record["parity"]["fp32"]["max_abs_diff"] < 1e-4
    assert res.record["parity"]["int8"]["n"] == 200
