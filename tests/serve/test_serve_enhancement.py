"""Serving an enhancement run: an image in, the restored image out, exactly the PNG `visionsmith enhance`
writes for the same file; bad uploads are 4xx; export and predict refuse such a run in one line."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from visionsmith.errors import UserError
from visionsmith.serve.app import ServeOptions, create_app
from visionsmith.serve.backends import load_backend

OVERRIDES = ["task=enhancement", "data.name=photos", "model.name=dncnn", "model.pretrained=false",
             "model.kwargs={depth: 5, width: 16}", "data.image_size=40", "train.batch_size=8", "train.max_steps=4",
             "train.epochs=1", "train.ema=false", "train.threads=1", "enhance.tile=96"]


@pytest.fixture(scope="module")
def enh_run(tmp_path_factory) -> Path:
    import visionsmith
    return visionsmith.train(None, overrides=OVERRIDES, out=tmp_path_factory.mktemp("serve-enh") / "dn", report=False)


@pytest.fixture(scope="module")
def client(enh_run):
    app = create_app([load_backend(f"dn={enh_run}")], ServeOptions(max_images=4))
    with TestClient(app) as c:
        yield c


def _noisy_png(size=(150, 201), grey=False) -> bytes:
    a = skdata.coffee()[: size[0], : size[1]].astype(float)
    rng = np.random.default_rng(0)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(b[:, :, 0] if grey else b).save(buf, format="PNG")
    return buf.getvalue()


def test_the_model_is_described_as_image_in_image_out(client):
    m = client.get("/v1/models").json()["models"][0]
    assert m["kind"] == "pytorch" and m["task"] == "enhancement" and m["output"] == "image"
    assert m["degradation"] == "noise" and m["scale"] == 1


def test_an_upload_comes_back_restored_exactly_as_enhance_writes_it(client, enh_run, tmp_path, cli):
    png = _noisy_png()
    r = client.post("/v1/models/dn:predict", files=[("file", ("noisy.png", png, "image/png")),
                                                   ("file", ("grey.png", _noisy_png(grey=True), "image/png"))])
    assert r.status_code == 200, r.text
    first, grey = r.json()["predictions"]
    assert first["size_in"] == [201, 150] and first["image"]["width"] == 201 and first["image"]["height"] == 150
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["image"]["png_base64"]))))
    (tmp_path / "noisy.png").write_bytes(png)
    cli("enhance", enh_run, tmp_path / "noisy.png", "--out", tmp_path / "out")  # 96-px tiles in both
    written = np.asarray(Image.open(tmp_path / "out" / "noisy.png"))
    assert np.array_equal(served, written)
    assert "converted to RGB" in grey["notes"][0]


def test_bad_uploads_are_4xx_naming_the_image(client):
    tiny = io.BytesIO()
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tiny, format="PNG")
    r = client.post("/v1/models/dn:predict", files=[("file", ("tiny.png", tiny.getvalue(), "image/png"))])
    assert r.status_code == 400 and "tiny.png" in r.text and "receptive field" in r.text
    r = client.post("/v1/models/dn:predict", files=[("file", ("x.png", b"not an image", "image/png"))])
    assert r.status_code in (400, 415) and "x.png" in r.text


def test_onnx_backend_and_predict_refuse_in_one_line(enh_run, cli, tmp_path):
    """An enhancement run exports (for the user's own runtime), but serve runs it from its folder, tile by
    tile: --backend onnx and the exported file are refused in one line."""
    with pytest.raises(UserError, match="serves with PyTorch only"):
        load_backend(str(enh_run), backend="onnx")
    res = cli("export", enh_run, "--out", tmp_path / "enh.onnx", check=False)
    assert res.returncode == 0 and "visionsmith enhance" in res.stdout, res.stderr
    with pytest.raises(UserError, match="serve its run folder"):
        load_backend(str(tmp_path / "enh.onnx"))
    (tmp_path / "a.png").write_bytes(_noisy_png())
    res = cli("predict", enh_run, tmp_path / "a.png", check=False)
    assert res.returncode == 2 and "visionsmith enhance" in res.stderr and "Traceback" not in res.stderr
