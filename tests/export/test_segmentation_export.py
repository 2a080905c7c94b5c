"""ONNX export of a segmentation run: [0, 1] pixels in, per-pixel logits [N, K, S, S] out; parity is
per-pixel argmax agreement (fp32) and the mIoU drop (INT8); predict and bad files as for classification."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from visionsmith import api
from visionsmith.engine.build import build_transforms, load_trained
from visionsmith.export import (
    ExportError,
    OnnxModel,
    ParityError,
    export_onnx,
    read_metadata,
)


@pytest.fixture(scope="module")
def seg_onnx(seg_run):
    return export_onnx(seg_run, check=24, threads=1)


def test_fp32_export_keeps_the_dense_contract_and_matches_pytorch(seg_run, seg_onnx):
    res = seg_onnx
    assert res.path == seg_run / "export" / "model.onnx" and res.path.is_file()
    fp32 = res.record["parity"]["fp32"]
    assert fp32["n"] == 24 and fp32["pixels"] == 24 * 64 * 64
    assert fp32["pixel_agreement"] >= 0.999 and fp32["max_abs_diff"] < 1e-4
    assert fp32["metric"] == "miou" and fp32["miou"] == pytest.approx(fp32["miou_ref"], abs=1e-9)
    assert res.record["task"] == "segmentation" and res.record["bounds"]["fp32_min_pixel_agreement"] == 0.999
    cfg, model, classes, _ = load_trained(seg_run)
    _, tf = build_transforms(cfg, model)
    g = onnx.load(str(res.path)).graph
    assert [i.name for i in g.input] == ["pixels"] and [o.name for o in g.output] == ["logits"]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    meta = read_metadata(res.path)
    assert meta["task"] == "segmentation" and meta["classes"] == classes and meta["image_size"] == 64
    assert meta["background"] == 0 and len(meta["palette"]) == len(classes) and "[N, K, S, S]" in meta["output"]
    m = OnnxModel(res.path)
    pm = model.eval()  # takes [0, 1] pixels, like the graph
    x = torch.rand(3, 3, 64, 64)  # a batch size the export never saw
    with torch.no_grad():
        ref = pm(x).numpy()
    got = m.predict_pixels(x)
    assert got.shape == (3, len(classes), 64, 64) and np.abs(got - ref).max() < 1e-4
    record = json.loads((seg_run / "export" / "export.json").read_text())["exports"]["export/model.onnx"]
    assert record["parity"]["fp32"]["pixel_agreement"] == fp32["pixel_agreement"]


def test_predict_with_onnx_equals_predict_with_the_checkpoint(seg_run, seg_onnx, tmp_path):
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    cfg = load_config(seg_run / "config.yaml")
    test = get_task(cfg).build_datasets(cfg.seed)["test"]
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    Image.fromarray(test.images[3].permute(1, 2, 0).numpy()).resize((120, 70)).save(d / "wide.png")
    (d / "bad.png").write_bytes(b"\x89PNG truncated")
    a = api.predict(seg_run, [d], out=tmp_path / "a")
    b = api.predict(seg_onnx.path, [d], out=tmp_path / "b")
    assert a.bad == b.bad and len(a.bad) == 1 and len(a.predictions) == len(b.predictions) == 4
    for pa, pb in zip(a.predictions, b.predictions):
        ma, mb = np.asarray(Image.open(pa.files["mask"])), np.asarray(Image.open(pb.files["mask"]))
        assert ma.shape == mb.shape and (ma == mb).mean() >= 0.999
        assert abs(pa.mean_confidence - pb.mean_confidence) < 1e-4


def test_cli_int8_export_prints_the_dense_parity_table(seg_run, cli, tmp_path):
    out = tmp_path / "seg.int8.onnx"
    res = cli("export", seg_run, "--int8", "--calib", "64", "--out", out)
    assert "pixel agree" in res.stdout and "onnx int8" in res.stdout and "mIoU drop" in res.stdout
    assert res.stdout.count("passed") == 2 and "bound 0.50" in res.stdout  # the segmentation default bound
    rec = json.loads((seg_run / "export" / "export.json").read_text())["exports"][str(out.resolve())]
    int8 = rec["parity"]["int8"]
    assert int8["miou_drop_points"] <= 0.5 and int8["pixel_agreement"] > 0.9
    assert rec["bounds"]["int8_max_drop_points"] == 0.5 and rec["quantization"]["calib_images"] == 64
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    meta = read_metadata(out)
    assert meta["int8"] is True and meta["task"] == "segmentation"
    assert "Axis" not in res.stderr  # ORT's per-channel notice for GroupNorm scales is not shown


class _Shifted:
    """A stand-in for an ONNX session: the PyTorch model's logits, changed by ``fn``."""

    def __init__(self, model, fn):
        self.model, self.fn = model, fn

    def predict_pixels(self, x):
        with torch.no_grad():
            return self.fn(self.model(torch.from_numpy(x))).numpy()


def test_dense_parity_bounds(seg_run):
    from visionsmith.config import load_config
    from visionsmith.export.inputs import heldout_pixels
    from visionsmith.export.parity import (
        check_fp32_dense,
        check_int8_dense,
        compare_dense,
    )
    from visionsmith.tasks import get_task
    cfg, model, classes, _ = load_trained(seg_run)
    _, tf = build_transforms(cfg, model)
    pm = model.eval()
    task = get_task(load_config(seg_run / "config.yaml"))
    held = heldout_pixels(cfg, tf, 6)
    assert held.labels.shape == (6, 64, 64) and held.pixels.shape == (6, 3, 64, 64)

    def run(fn):
        return compare_dense(pm, _Shifted(pm, fn), held.pixels, held.labels, lambda: task.metric(classes), "mask",
                             "miou", atol=1e-3, batch=4)
    same = run(lambda z: z)
    assert same["pixel_agreement"] == 1.0 and same["max_abs_diff"] == 0 and same["miou_drop_points"] == 0
    check_fp32_dense(same, 1e-3)
    with pytest.raises(ParityError, match="max .logit difference. 1.00e-02 .* nothing was written"):
        check_fp32_dense(run(lambda z: z + 0.01), 1e-3)  # same argmax everywhere, logits off by 0.01
    worse = run(lambda z: torch.where(torch.arange(z.shape[-1]) < 16, z.flip(1), z))  # a quarter of the pixels flipped
    assert worse["pixel_agreement"] < 0.999 and worse["flips_beyond_tie"] > 0
    with pytest.raises(ParityError, match="per-pixel argmax agreement"):
        check_fp32_dense(worse, 1.0)
    if worse["miou_drop_points"] > 0.5:
        with pytest.raises(ParityError, match="static INT8 model loses .* miou points"):
            check_int8_dense(worse, 0.5)
    check_int8_dense(worse, 100.0)


def test_bad_files_and_arguments(seg_run, seg_onnx, tmp_path):
    cut = tmp_path / "cut.onnx"  # a half-copied export
    cut.write_bytes(seg_onnx.path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        api.predict(cut, [tmp_path], out=tmp_path / "o")
    m = onnx.load(str(seg_onnx.path))  # a visionsmith export of a task predict cannot run
    prop = next(p for p in m.metadata_props if p.key == "visionsmith")
    prop.value = json.dumps({**json.loads(prop.value), "task": "depth"})
    other = tmp_path / "other.onnx"
    onnx.save_model(m, str(other))
    with pytest.raises(ValueError, match="'depth' export; only classification, detection, enhancement, segmentation exports"):
        OnnxModel(other)
    with pytest.raises(ExportError, match="--opset 7 cannot be written"):
        export_onnx(seg_run, opset=7, out=tmp_path / "op7.onnx")
    with pytest.raises(ValueError, match="--out DIR"):  # an ONNX segmenter needs --out like its run
        api.predict(seg_onnx.path, [tmp_path])
