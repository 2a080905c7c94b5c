"""Serving a generation run: ``POST /v1/models/NAME:generate`` (reproducible by seed, every bad argument
a 400 naming the JSON key, uploads refused) and, in headless Chromium, the page's Generate button
drawing samples of the chosen class (screenshot: ``tests/artifacts/serve/generation.png``)."""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visionsmith.config import load_config
from visionsmith.engine.loop import fit
from visionsmith.serve import ServeOptions, create_app, load_backend

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    """A class-conditional GAN after a few steps (no validation split: nothing to score it against)."""
    import torch
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "gan-fashion-mnist.yaml",
                      ["data.train_limit=256", "data.val_fraction=0", "train.epochs=1", "model.kwargs.width=16",
                       "train.threads=1", "train.batch_size=32"])
    return fit(cfg, out=tmp_path_factory.mktemp("serve-gen") / "gan")


def _pngs(answer: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(im["png_base64"])))) for im in answer["images"]]


def test_generate_endpoint(gan_run):
    with TestClient(create_app([load_backend(str(gan_run), backend="pytorch")])) as c:
        info = c.get("/v1/models/gan").json()
        assert info["output"] == "generated images" and info["conditional"] and info["method"] == "gan"
        a = c.post("/v1/models/gan:generate", json={"n": 4, "class": 7, "seed": 1}).json()
        b = c.post("/v1/models/gan:generate", json={"n": 4, "class": 7, "seed": 1}).json()
        other = c.post("/v1/models/gan:generate", json={"n": 4, "class": 7, "seed": 2}).json()
        assert [im["class"] for im in a["images"]] == ["Sneaker"] * 4
        imgs = _pngs(a)
        assert all(x.shape == (32, 32) for x in imgs) and imgs[0].std() > 0
        assert all(np.array_equal(x, y) for x, y in zip(imgs, _pngs(b)))
        assert not np.array_equal(imgs[0], _pngs(other)[0])
        spread = c.post("/v1/models/gan:generate", json={"n": 10}).json()  # no class: every class in turn
        assert [im["class"] for im in spread["images"]] == info["classes"]
        for body, msg in [({"class": 10}, "class 10 is out of range"), ({"n": 0}, "n 0"), ({"n": 65}, "at most 64"),
                          ({"steps": 10}, "diffusion settings"), ({"n": "8"}, "n must be a number"),
                          ([1, 2], "JSON object")]:
            r = c.post("/v1/models/gan:generate", json=body)
            assert r.status_code == 400 and msg in r.json()["detail"], (body, r.json())
            assert "--" not in r.json()["detail"]  # JSON keys, not the CLI's flags
        r = c.post("/v1/models/gan:predict", files={"file": ("x.png", b"\x89PNG")})
        assert r.status_code == 400 and ":generate" in r.json()["detail"]
        assert c.get("/v1/models/gan:generate").status_code == 405


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.skipif(not (CHROMIUM and shutil.which("chromedriver")), reason="needs Chromium and chromedriver")
@pytest.mark.timeout(240)
def test_the_page_draws_samples_of_the_chosen_class(gan_run, live_server, artifacts):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,700"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        with live_server(create_app([load_backend(str(gan_run), backend="pytorch")], ServeOptions())) as url:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda d: len(Select(d.find_element(By.ID, "gen-class")).options) == 11)
            assert not browser.find_element(By.ID, "drop").is_displayed()  # nothing to upload
            Select(browser.find_element(By.ID, "gen-class")).select_by_visible_text("Trouser")
            browser.find_element(By.ID, "gen-go").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".samples img")) == 8)
            captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".samples figcaption")]
            loaded = browser.execute_script(
                "return [...document.querySelectorAll('.samples img')].every(i => i.complete && i.naturalWidth === 32)")
            browser.save_screenshot(str(artifacts / "generation.png"))
        assert captions == ["Trouser"] * 8 and loaded
    finally:
        browser.quit()
