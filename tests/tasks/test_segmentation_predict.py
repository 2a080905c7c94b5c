"""`visionsmith predict` for a segmentation run: a mask, an overlay and a JSON per image, each of the
input's own size whatever its shape or mode; bad files listed, never fatal; --out required."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionsmith import api
from visionsmith.errors import UserError
from visionsmith.outputs.segmentation import MaskPrediction, palette, stitch, tile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """MobileNetV2 + FPN on 64 px fashion-mnist scenes (COCO format), 24 steps: seconds on one core."""
    from visionsmith.data.scenes import ensure_scenes
    torch.set_num_threads(1)
    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)
    over = ["data.name=coco", f"data.root={root}", "data.image_size=64", "model.name=mobilenetv2",
            "model.pretrained=true", "train.batch_size=16", "train.threads=1", "train.epochs=2",
            "train.eval_batch_size=24", "seg.channels=32"]
    return api.train(REPO / "recipes" / "scenes-seg.yaml", over, out=tmp_path_factory.mktemp("seg") / "run",
                     report=False)


@pytest.fixture(scope="module")
def images(seg_run, tmp_path_factory):
    """Test-split scenes as files, in the shapes and modes users send, plus two bad files."""
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    cfg = load_config(seg_run / "config.yaml")
    test = get_task(cfg).build_datasets(cfg.seed)["test"]
    d = tmp_path_factory.mktemp("imgs")
    a = [test.images[i].permute(1, 2, 0).numpy() for i in range(3)]  # uint8 [64, 64, 3]
    Image.fromarray(a[0]).save(d / "square.png")
    Image.fromarray(a[1]).resize((150, 90)).save(d / "wide.jpg", quality=90)
    Image.fromarray(a[2]).convert("L").resize((40, 130)).save(d / "tall-gray.png")
    Image.fromarray(np.dstack([a[0], np.full((64, 64), 200, np.uint8)]), "RGBA").resize((97, 97)).save(d / "alpha.png")
    (d / "broken.png").write_bytes(b"this is not an image")
    (d / "empty.jpg").write_bytes(b"")
    return d, test


def test_predict_writes_mask_overlay_and_json_of_the_input_size(seg_run, images, tmp_path):
    folder, _ = images
    out = tmp_path / "out"
    res = api.predict(seg_run, [folder], out=out)
    assert res.task == "segmentation" and res.out == out
    assert sorted(Path(p).name for p, _ in res.bad) == ["broken.png", "empty.jpg"]
    assert all(reason for _, reason in res.bad)
    assert len(res.predictions) == 4
    classes = json.loads((seg_run / "run.json").read_text())["classes"]
    for p in res.predictions:
        assert isinstance(p, MaskPrediction)
        w, h = Image.open(p.path).size
        assert (p.width, p.height) == (w, h)
        mask = Image.open(p.files["mask"])
        assert mask.mode == "P" and mask.size == (w, h)  # a palette PNG of class indices, the input's size
        idx = np.asarray(mask)
        assert idx.max() < len(classes)
        assert mask.getpalette()[:3 * len(classes)] == [v for c in palette(len(classes)) for v in c]
        over = Image.open(p.files["overlay"])
        assert over.width > w and over.height >= h  # the image, then the legend on its right
        js = json.loads(Path(p.files["json"]).read_text())
        assert js["width"] == w and js["height"] == h and js["classes"] == classes
        assert abs(sum(js["fractions"].values()) - 1) < 1e-4 and 0 < js["mean_confidence"] <= 1
        counts = np.bincount(idx.ravel(), minlength=len(classes)) / idx.size
        np.testing.assert_allclose([js["fractions"][c] for c in classes], counts, atol=1e-6)
        assert js["present"] == [c for c in sorted(classes, key=lambda c: -js["fractions"][c]) if js["fractions"][c] > 0]
    index = json.loads((out / "predictions.json").read_text())
    assert len(index["predictions"]) == 4 and len(index["bad"]) == 2 and index["task"] == "segmentation"
    assert not list(out.glob(".*.tmp"))  # every file was renamed into place whole


def test_predict_masks_match_the_model_on_the_test_split(seg_run, images, tmp_path):
    """A square image at the training size: predict's mask is the evaluation's argmax, pixel for pixel."""
    from visionsmith.engine.build import build_transforms, load_trained
    folder, test = images
    cfg, model, _, _ = load_trained(seg_run)
    _, tf = build_transforms(cfg, model)
    with torch.no_grad():
        want = model(tf(test.images[:1], None)).argmax(1)[0].numpy()
    res = api.predict(seg_run, [folder / "square.png"], out=tmp_path / "o")
    got = np.asarray(Image.open(res.predictions[0].files["mask"]))
    assert np.array_equal(got, want)


def test_out_is_required_and_names_do_not_collide(seg_run, images, tmp_path):
    folder, _ = images
    with pytest.raises(UserError, match="--out DIR"):
        api.predict(seg_run, [folder])
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.png").write_bytes((folder / "square.png").read_bytes())
    res = api.predict(seg_run, [tmp_path / "a", tmp_path / "b"], out=tmp_path / "o")
    assert [Path(p.files["mask"]).name for p in res.predictions] == ["x.mask.png", "x-2.mask.png"]


def test_windows_cover_a_long_image_and_stitch_back_to_its_size():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 160, 3), dtype=np.uint8))
    windows, t = tile(img, 32, grayscale=False)
    # shorter side 64 -> 32, so 160 -> 80: three 32 px windows at x = 0, 24, 48
    assert windows.shape == (3, 3, 32, 32) and windows.dtype == torch.uint8
    assert (t.rw, t.rh) == (80, 32) and [x for x, _ in t.offsets] == [0, 24, 48]
    # class 1 wins in the right-hand window only, at a lower model size (16 px, upsampled to 32)
    logits = torch.zeros(3, 3, 16, 16)
    logits[:, 0] = 1.0
    logits[2, 1] = 5.0
    cls, conf = stitch(logits, t)
    assert cls.shape == (64, 160) and cls.dtype == np.uint8 and 0 < conf <= 1
    assert set(np.unique(cls)) == {0, 1}
    assert (cls[:, :90] == 0).all() and (cls[:, -40:] == 1).all()  # the overlap (x 48..56 of 80) averaged


def test_cli_predict_prints_one_line_per_image(seg_run, images, cli, tmp_path):
    folder, _ = images
    res = cli("predict", seg_run, folder, "--out", tmp_path / "o")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(str(folder))]
    assert len(lines) == 4 and all("%" in ln and "confidence" in ln and ".mask.png" in ln for ln in lines)
    assert "skipped" in res.stderr and "broken.png" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "o" / "predictions.json").is_file()
    res = cli("predict", seg_run, folder, check=False)
    assert res.returncode == 2 and "--out DIR" in res.stderr and "Traceback" not in res.stderr
