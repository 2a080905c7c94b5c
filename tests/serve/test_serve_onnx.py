"""Serving an ONNX file next to a checkpoint: same answers, batching, clear errors; and a
checkpoint serves on a machine without onnx/onnxruntime.

Most ONNX files here are made with a plain ``torch.onnx.export`` of the run's model (it takes pixels) and
the export contract (input ``pixels`` [N, C, S, S] in [0, 1], output ``logits``, metadata key
``visionsmith`` with classes, image_size, in_chans, task, preprocess), so they can also be made
with a fixed batch size or without metadata; one test serves what ``visionsmith export`` writes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from visionsmith.serve import OnnxBackend, ServeOptions, TorchBackend, create_app, load_backend

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
# The TorchScript exporter (dynamo=False) takes 0.3 s where the torch.export one takes seconds;
# its deprecation notice is not this test's business.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def export_onnx(run_dir, path, dynamic_batch=True, metadata=True):
    """The run's best weights as ``path`` (an .onnx file following the export contract)."""
    from visionsmith.data import decode_size
    from visionsmith.engine.build import load_trained
    cfg, model, classes, info = load_trained(run_dir)
    pm = model.eval()  # [0, 1] pixels in: the model normalises them itself
    s, c = cfg.data.image_size, cfg.model.in_chans
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(pm, (torch.rand(1, c, s, s),), str(path), input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                      dynamo=False)
    if metadata:
        m = onnx.load(str(path))
        m.metadata_props.add(key="visionsmith", value=json.dumps(
            {"classes": classes, "image_size": s, "in_chans": c, "task": "classification",
             "preprocess": {"decode_size": decode_size(cfg.data), "grayscale": info["data"]["channels"] == 1}}))
        onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_run(digits_run, tmp_path_factory):
    """A copy of the run folder with export/model.onnx (and a fixed-batch-1 variant)."""
    run = tmp_path_factory.mktemp("onnx") / "digits"
    shutil.copytree(digits_run, run)
    export_onnx(run, run / "export" / "model.onnx")
    export_onnx(run, run / "export" / "model.b1.onnx", dynamic_batch=False)
    return run


def test_onnx_and_checkpoint_serve_side_by_side_with_the_same_answers(onnx_run, digit_pngs):
    onnx_b = load_backend(str(onnx_run / "export" / "model.onnx"))
    assert isinstance(onnx_b, OnnxBackend) and onnx_b.name == "digits-onnx" and onnx_b.max_batch is None
    app = create_app([TorchBackend(onnx_run, "digits"), onnx_b], ServeOptions(max_wait_ms=20))
    with TestClient(app) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["digits-onnx"]["kind"] == "onnx" and models["digits"]["kind"] == "pytorch"
        assert models["digits-onnx"]["classes"] == models["digits"]["classes"]
        assert models["digits-onnx"]["grayscale"] is True
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(digit_pngs[:4])]
        a = c.post("/v1/models/digits:predict?topk=10", files=files).json()["predictions"]
        b = c.post("/v1/models/digits-onnx:predict?topk=10", files=files).json()["predictions"]
    for pa, pb in zip(a, b):
        da = {t["class"]: t["prob"] for t in pa["topk"]}
        db = {t["class"]: t["prob"] for t in pb["topk"]}
        assert pa["topk"][0]["class"] == pb["topk"][0]["class"]
        np.testing.assert_allclose([da[k] for k in sorted(da)], [db[k] for k in sorted(da)], atol=1e-4)


def test_what_visionsmith_export_writes_is_served(digits_run, digit_pngs, tmp_path):
    """The real export path: `visionsmith export` -> RUN/export/model.onnx -> `serve RUN/export/model.onnx`."""
    from visionsmith.export import export_onnx
    run = tmp_path / "digits"
    shutil.copytree(digits_run, run)
    path = export_onnx(run).path
    assert path == run / "export" / "model.onnx"
    backend = load_backend(str(path))
    assert backend.name == "digits-onnx" and backend.describe()["int8"] is False
    with TestClient(create_app([TorchBackend(run, "digits"), backend])) as c:
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(digit_pngs[:4])]
        a = c.post("/v1/models/digits:predict", files=files).json()["predictions"]
        b = c.post("/v1/models/digits-onnx:predict", files=files).json()["predictions"]
    assert [p["topk"][0]["class"] for p in a] == [p["topk"][0]["class"] for p in b]


def test_a_fixed_batch_onnx_graph_is_served_one_image_per_call(onnx_run, digit_pngs):
    b1 = load_backend(f"b1={onnx_run / 'export' / 'model.b1.onnx'}")
    assert b1.name == "b1" and b1.max_batch == 1
    with TestClient(create_app([b1], ServeOptions(max_batch=32))) as c:
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(digit_pngs[:3])]
        r = c.post("/v1/models/b1:predict", files=files)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_onnx_without_metadata_or_not_onnx_is_a_clear_error(digits_run, tmp_path):
    bare = export_onnx(digits_run, tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(ValueError, match="not a visionsmith export"):
        load_backend(str(bare))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        load_backend(str(junk))


def test_a_checkpoint_serves_without_onnx_installed(digits_run, digit_pngs, tmp_path):
    """onnx/onnxruntime are imported only for .onnx files: block both and serve the run folder."""
    (tmp_path / "x.png").write_bytes(digit_pngs[0])
    code = f"""
import sys
sys.modules["onnx"] = None; sys.modules["onnxruntime"] = None   # importing either now fails
from fastapi.testclient import TestClient
from visionsmith.serve import create_app, load_backend
with TestClient(create_app([load_backend({str(digits_run)!r})])) as c:
    r = c.post("/v1/models/digits:predict", files={{"file": ("x.png", open({str(tmp_path / 'x.png')!r}, "rb").read())}})
    assert r.status_code == 200, r.text
try:
    load_backend({str(tmp_path / 'm.onnx')!r})
except ValueError as e:
    print("onnx:", e)
print("served without onnx")
"""
    (tmp_path / "m.onnx").write_bytes(b"x")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "served without onnx" in res.stdout and "needs onnx and onnxruntime" in res.stdout
