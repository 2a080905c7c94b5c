"""Serving a detection run in a real browser: the page draws the server's boxes on the upload, each
tagged in its class's colour, best on top, with a legend counting the classes found (detections scoring
>= 0.3); the JSON it draws is the one the REST API answers for the same file."""
from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionsmith.serve import ServeOptions, TorchBackend, create_app


def _post(url: str, path: Path) -> dict:
    """The REST answer for one file (multipart by hand: the standard library has no encoder)."""
    b = uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/models/det:predict", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["predictions"][0]


@pytest.mark.timeout(300)
def test_page_draws_the_boxes_on_the_upload(det_run, live_server, browser, upload_in_page, tmp_path, artifacts):
    from selenium.webdriver.common.by import By
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    cfg = load_config(det_run / "config.yaml")
    train = get_task(cfg).build_datasets(cfg.seed)["train"]
    img = tmp_path / "scene.png"  # a training scene at 2x: the model has seen it, so it finds something
    Image.fromarray(train.images[0].permute(1, 2, 0).numpy()).resize((128, 128), Image.Resampling.NEAREST).save(img)
    with live_server(create_app([TorchBackend(det_run, "det")], ServeOptions())) as url:
        pred = _post(url, img)
        card, canvas, size = upload_in_page(url, img, "detection")
        legend = [(li.find_element(By.CSS_SELECTOR, ".label").text, li.find_element(By.CSS_SELECTOR, ".pct").text)
                  for li in card.find_elements(By.CSS_SELECTOR, ".legend li")]
        top = card.get_attribute("data-top")
        gen_panel_shown = browser.find_element(By.ID, "gen").is_displayed()  # for generative models only
        # RGBA of the whole canvas, row-major [H, W, 4]
        rgba = np.array(browser.execute_script(
            "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)",
            canvas), np.uint8).reshape(size[1], size[0], 4)
        browser.save_screenshot(str(artifacts / "page-detection.png"))
        console = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not console, console  # no CSP violation, no failed asset
    assert not gen_panel_shown
    assert size == [128, 128]  # the canvas has the upload's pixels (boxes are in them)
    shown = [d for d in pred["detections"] if d["score"] >= 0.3]
    assert shown, "the model found nothing on a scene it trained on: the fixture needs more training"
    counts: dict[str, int] = {}
    for d in shown:
        counts[d["class"]] = counts.get(d["class"], 0) + 1
    assert sorted(legend) == sorted((c, f"× {k}") for c, k in counts.items())
    assert top == shown[0]["class"]
    # the best box's tag (drawn last, so on top): a rectangle filled with its class colour above the box's
    # left corner (or inside it at the top edge), its text starting 2 px in
    best = shown[0]
    x1, y1 = best["box"][0], best["box"][1]
    ty = y1 - 11 if y1 - 11 >= 0 else y1  # font 9 px at this scale (canvas 2x on screen), tag height font + 2
    want = np.array([int(pred["colors"][best["class"]][i:i + 2], 16) for i in (1, 3, 5)])
    px = rgba[int(ty) + 2, int(x1) + 1, :3].astype(int)
    assert np.abs(px - want).max() <= 8, (px, want)
