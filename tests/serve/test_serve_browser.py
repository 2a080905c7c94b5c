"""End to end in a real browser: headless Chromium (Selenium + chromedriver) opens the page served
by uvicorn on loopback, picks a model, uploads a digit and reads the prediction from the page.

The screenshot is saved to ``tests/artifacts/serve/page.png`` (ignored by git; CI can keep it).
Skipped only when the Debian packages ``chromium`` / ``chromium-driver`` are not installed
(``scripts/setup.sh`` installs them)."""
from __future__ import annotations

import io

import pytest

from visionsmith.serve import ServeOptions, TorchBackend, create_app

@pytest.mark.timeout(240)
def test_upload_in_the_page_shows_the_prediction(digits_run, digit_pngs, live_server, browser, tmp_path, artifacts):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    import visionsmith

    # One held-out digit, drawn at 64 px so the page's thumbnail shows it; the reference answer is
    # what `visionsmith predict` says for the same file.
    digit = Image.open(io.BytesIO(digit_pngs[3])).resize((64, 64), Image.Resampling.NEAREST)
    img = tmp_path / "digit.png"
    digit.save(img)
    want = visionsmith.predict(digits_run, [img], topk=3).predictions[0].topk
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image")

    # Two models, so choosing one in the select is part of the test.
    app = create_app([TorchBackend(digits_run, "digits"), TorchBackend(digits_run, "digits-b")], ServeOptions())
    wait = WebDriverWait(browser, 60)
    with live_server(app) as url:
        browser.get(url + "/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
        Select(browser.find_element(By.ID, "model")).select_by_value("digits-b")
        Select(browser.find_element(By.ID, "topk")).select_by_visible_text("3")
        browser.find_element(By.ID, "file").send_keys(str(img))
        card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result[data-top]")))
        labels = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".bar .label")]
        probs = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".bar .prob")]
        latency = card.find_element(By.CSS_SELECTOR, ".latency").text
        bar_widths = [e.size["width"] for e in card.find_elements(By.CSS_SELECTOR, ".bar .fill")]
        track_width = card.find_element(By.CSS_SELECTOR, ".bar .track").size["width"]
        browser.find_element(By.ID, "file").send_keys(str(bad))  # a bad file: its own card says why
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result.error")))
        error_text = browser.find_element(By.CSS_SELECTOR, ".result.error .latency").text
        shot = artifacts / "page.png"
        browser.save_screenshot(str(shot))
        console = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    print(f"\nscreenshot: {shot}")

    assert labels == [c for c, _ in want]
    assert probs[0] == f"{100 * want[0][1]:.1f}%"
    # The bars are drawn to scale: the first is the top probability's share of the track.
    assert bar_widths == sorted(bar_widths, reverse=True) and bar_widths[0] > 0
    assert abs(bar_widths[0] / track_width - want[0][1]) < 0.02
    assert "server" in latency and "round trip" in latency and "ms" in latency and "digits-b" in latency
    assert error_text.startswith("415") and "not an image" in error_text
    # The only console error allowed is the browser reporting the refused upload (415); a CSP
    # violation or a failed asset load would show here.
    assert all("415" in e["message"] for e in console), console
    assert shot.stat().st_size > 5000 and np.asarray(Image.open(shot)).std() > 0


@pytest.mark.timeout(240)
def test_an_enhancement_model_shows_a_before_after_slider(live_server, browser, tmp_path, artifacts):
    """A denoising run in the page: the restored image laid over the upload, a slider that moves the
    boundary, and the restored pixels are the ones the server answered."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data as skdata

    import visionsmith
    from visionsmith.serve.backends import load_backend
    run = visionsmith.train(None, out=tmp_path / "dn", report=False, overrides=[
        "task=enhancement", "data.name=photos", "model.name=dncnn", "model.pretrained=false",
        "model.kwargs={depth: 5, width: 16}", "data.image_size=40", "train.batch_size=8", "train.max_steps=3",
        "train.epochs=1", "train.ema=false", "train.threads=1"])
    rng = np.random.default_rng(0)
    a = skdata.chelsea()[:120, :160].astype(float)
    img = tmp_path / "noisy.png"
    Image.fromarray(np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round().astype(np.uint8)).save(img)
    app = create_app([load_backend(f"dn={run}")], ServeOptions())
    wait = WebDriverWait(browser, 60)
    with live_server(app) as url:
        browser.get(url + "/")
        wait.until(lambda d: "denoising" in d.find_element(By.ID, "model-info").text)
        assert not browser.find_element(By.ID, "topk").is_displayed()  # an image answer has no top-k
        browser.find_element(By.ID, "file").send_keys(str(img))
        card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result[data-top]")))
        after = card.find_element(By.CSS_SELECTOR, ".compare img.after")
        before = card.find_element(By.CSS_SELECTOR, ".compare img.before")
        slider = card.find_element(By.CSS_SELECTOR, ".compare input.slider")
        assert after.get_attribute("src").startswith("data:image/png;base64,")
        assert before.size == after.size and before.size["width"] > 100  # laid exactly over each other
        assert "inset(0px 0px 0px 50%)" in after.value_of_css_property("clip-path")
        browser.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent(new Event('input'))", slider)
        assert "inset(0px 0px 0px 20%)" in after.value_of_css_property("clip-path")
        legend = card.find_element(By.CSS_SELECTOR, ".legend").text
        browser.save_screenshot(str(artifacts / "page-enhancement.png"))
    assert "160×120 → 160×120" in legend and "restored" in legend
