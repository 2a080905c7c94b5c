"""Fixtures for the serving tests: one tiny trained run folder per session, images, a real server.

``digits_run`` trains scikit-learn's 8x8 digits with the 16 px ``simple_cnn`` for one epoch
(seconds); every test serves that same folder.  ``live_server`` runs the real app under uvicorn
on a free loopback port in a background thread, for the tests that need real sockets.
"""
from __future__ import annotations

import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "serve"  # screenshots etc.; ignored by git


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    import visionsmith
    out = tmp_path_factory.mktemp("serve") / "digits"
    return visionsmith.train(REPO / "recipes" / "digits.yaml", overrides=["train.epochs=1"], out=out, report=False)


@pytest.fixture(scope="session")
def digit_pngs(digits_run) -> list[bytes]:
    """16 held-out digits of the run's own test split as PNG bytes (8x8 grayscale)."""
    from visionsmith.config import load_config
    from visionsmith.data import build_datasets
    cfg = load_config(digits_run / "config.yaml")
    test = build_datasets(cfg.data, cfg.seed)["test"]
    return [png(img[0].numpy()) for img in test.images[:16]]


def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 array (H, W) or (H, W, 3) -> encoded image bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (``tests/artifacts/serve/``, ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def make_png():
    """``make_png(uint8 array, fmt="PNG") -> bytes``."""
    return png


class LiveServer:
    """The app under a real uvicorn on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, app):
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        t_end = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > t_end:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_server():
    """``with live_server(app) as url: ...``"""
    return LiveServer


def train_on_scenes(tmp_path_factory, recipe: str, extra: list[str]) -> Path:
    """A MobileNetV2 run of ``recipes/RECIPE`` on 64 px fashion-mnist scenes (192 training scenes, COCO
    format), one thread; ``extra``: more overrides (epochs, head width)."""
    import torch

    import visionsmith
    from visionsmith.data.scenes import ensure_scenes
    torch.set_num_threads(1)
    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)
    over = ["data.name=coco", f"data.root={root}", "data.image_size=64", "model.name=mobilenetv2",
            "model.pretrained=true", "train.batch_size=16", "train.eval_batch_size=24", "train.threads=1", *extra]
    return visionsmith.train(REPO / "recipes" / recipe, overrides=over, out=tmp_path_factory.mktemp("serve") / "run",
                             report=False)


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory) -> Path:
    """A segmentation run: FPN, 24 steps (~10 s)."""
    return train_on_scenes(tmp_path_factory, "scenes-seg.yaml", ["train.epochs=2", "seg.channels=32"])


@pytest.fixture(scope="session")
def det_run(tmp_path_factory) -> Path:
    """A detection run: FCOS, 5 epochs (~20 s), enough to find objects on its own training scenes."""
    return train_on_scenes(tmp_path_factory, "scenes-det.yaml", ["train.epochs=5", "det.channels=32", "train.ema=false"])


@pytest.fixture
def upload_in_page(browser):
    """``upload_in_page(url, image, task)``: open the served page in ``browser``, wait for its ``task`` model,
    upload ``image`` -> (its result card, the overlay canvas, the canvas's [width, height]); masks and boxes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    def upload(url: str, image: Path, task: str):
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_element(By.ID, "model-info").text.startswith(task))
        browser.find_element(By.ID, "file").send_keys(str(image))
        card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result.segmentation")))
        canvas = card.find_element(By.CSS_SELECTOR, "canvas.overlay")
        return card, canvas, browser.execute_script("return [arguments[0].width, arguments[0].height]", canvas)
    return upload


@pytest.fixture(scope="session")
def scene_pngs(seg_run) -> list[bytes]:
    """Four held-out scenes of the segmentation run as PNG bytes: 64 x 64, 150 x 90, 40 x 130 gray, 97 x 97."""
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    cfg = load_config(seg_run / "config.yaml")
    test = get_task(cfg).build_datasets(cfg.seed)["test"]
    a = [test.images[i].permute(1, 2, 0).numpy() for i in range(4)]
    sizes = [None, (150, 90), (40, 130), (97, 97)]
    out = []
    for img, size in zip(a, sizes):
        im = Image.fromarray(img)
        im = im.resize(size) if size else im
        out.append(png(np.asarray(im.convert("L") if size == (40, 130) else im)))
    return out


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Headless Chromium through Selenium; skips the test where the Debian packages chromium and
    chromium-driver are not installed (``scripts/setup.sh`` installs them)."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Chromium and chromedriver (Debian packages chromium and chromium-driver; "
                    "scripts/setup.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
