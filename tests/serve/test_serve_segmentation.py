"""Serving a segmentation run: the answer carries the class mask (palette PNG, base64, the upload's
size) and per-class pixel fractions, equal to what `visionsmith predict` writes; the page draws the
mask over the upload with a legend."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visionsmith.serve import ServeOptions, TorchBackend, create_app, load_backend

PREDICT = "/v1/models/seg:predict"


@pytest.fixture(scope="module")
def client(seg_run):
    # PyTorch: the masks are compared bit for bit with `visionsmith predict` on the checkpoint
    app = create_app([load_backend(f"seg={seg_run}", backend="pytorch")], ServeOptions(max_images=4))
    with TestClient(app) as c:
        yield c


def _mask(pred) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(pred["mask"]["png_base64"])))


def test_model_description(client, seg_run):
    (m,) = client.get("/v1/models").json()["models"]
    assert m["task"] == "segmentation" and m["kind"] == "pytorch" and m["classes"][0] == "background"
    assert m["background"] == 0 and len(m["palette"]) == len(m["classes"]) and m["palette"][0] == "#000000"


def test_answer_is_the_mask_of_the_upload_and_matches_predict(client, seg_run, scene_pngs, tmp_path):
    import visionsmith
    files = []
    for i, data in enumerate(scene_pngs):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(data)
    want = visionsmith.predict(seg_run, files, out=tmp_path / "out").predictions
    r = client.post(PREDICT, files=[("file", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "seg" and got["latency_ms"] > 0 and len(got["predictions"]) == 4
    classes = client.get("/v1/models/seg").json()["classes"]
    for f, w, p in zip(files, want, got["predictions"]):
        assert p["filename"] == f.name
        mask = _mask(p)
        assert mask.mode == "P" and mask.size == Image.open(f).size == (p["width"], p["height"])
        assert np.array_equal(np.asarray(mask), np.asarray(Image.open(w.files["mask"])))
        assert set(p["fractions"]) == set(classes) and abs(sum(p["fractions"].values()) - 1) < 1e-4
        assert p["fractions"] == pytest.approx(w.fractions, abs=1e-6)
        assert p["mean_confidence"] == pytest.approx(w.mean_confidence, abs=1e-5)
        found = [c["class"] for c in p["classes"]]
        assert found == sorted(found, key=lambda c: -p["fractions"][c]) and all(p["fractions"][c] > 0 for c in found)
        assert all(c["color"].startswith("#") and classes[c["index"]] == c["class"] for c in p["classes"])


def test_json_body_and_bad_uploads(client, scene_pngs):
    r = client.post(PREDICT, json={"image": base64.b64encode(scene_pngs[1]).decode()})
    assert r.status_code == 200 and _mask(r.json()["predictions"][0]).size == (150, 90)
    r = client.post(PREDICT, files={"file": ("notes.png", b"not an image", "image/png")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]


def test_classification_answers_keep_their_shape(digits_run, digit_pngs):
    app = create_app([load_backend(f"digits={digits_run}")])
    with TestClient(app) as c:
        p = c.post("/v1/models/digits:predict", files={"file": ("d.png", digit_pngs[0], "image/png")},
                   params={"topk": 2}).json()["predictions"][0]
    assert set(p) == {"filename", "topk"} and [set(t) for t in p["topk"]] == [{"class", "index", "prob"}] * 2


@pytest.mark.timeout(240)
def test_page_draws_the_mask_over_the_upload(seg_run, scene_pngs, live_server, browser, upload_in_page, tmp_path, artifacts):
    from selenium.webdriver.common.by import By
    img = tmp_path / "scene.png"
    img.write_bytes(scene_pngs[1])  # 150 x 90
    driver = browser
    with live_server(create_app([TorchBackend(seg_run, "seg")], ServeOptions())) as url:
        card, canvas, size = upload_in_page(url, img, "segmentation")
        legend = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".legend li")]
        top = card.get_attribute("data-top")
        shot = artifacts / "page-segmentation.png"
        driver.save_screenshot(str(shot))
        console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert size == [150, 90]  # the canvas has the upload's pixels
    assert legend and all("%" in t for t in legend) and legend[0].startswith(top)
    assert not console, console  # no CSP violation, no failed asset
