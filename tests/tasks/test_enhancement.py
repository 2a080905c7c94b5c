"""Enhancement (denoising, super-resolution): metrics against scikit-image, tiled inference against the
whole image, the degradations, and a short real run through train, eval (with the classical
baselines), report and ``visionsmith enhance``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from visionsmith.data import degrade
from visionsmith.metrics.enhancement import EnhanceMetric, luma, psnr, ssim
from visionsmith.models.enhancers import create_enhancer
from visionsmith.ops.tiles import tiled

REPO = Path(__file__).resolve().parents[2]


def _noisy(a: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("shave", [0, 3])
def test_psnr_and_ssim_equal_scikit_image(shave):
    a = skdata.astronaut()[40:240, 100:356]  # a real photo, 200 x 256 RGB
    b = _noisy(a, 25)
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1) for x in (a, b))
    s = (slice(shave, a.shape[0] - shave), slice(shave, a.shape[1] - shave)) if shave else (slice(None),) * 2
    ref_psnr = peak_signal_noise_ratio(a[s], b[s], data_range=255)
    ref_ssim = structural_similarity(a[s], b[s], channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert psnr(tb, ta, shave) == pytest.approx(ref_psnr, abs=1e-9)
    assert ssim(tb, ta, shave) == pytest.approx(ref_ssim, abs=1e-9)
    ya, yb = luma(ta)[0].numpy(), luma(tb)[0].numpy()  # BT.601 Y on 16..235, as rgb2ycbcr
    np.testing.assert_allclose(ya, rgb2ycbcr(a)[..., 0], atol=1e-9)
    assert psnr(luma(tb), luma(ta), shave) == pytest.approx(peak_signal_noise_ratio(ya[s], yb[s], data_range=255))
    assert ssim(luma(tb), luma(ta), shave) == pytest.approx(structural_similarity(
        ya[s], yb[s], data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), abs=1e-9)


def test_metric_averages_per_image_scores():
    a = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)
    noisy = [torch.from_numpy(_noisy(skdata.chelsea(), s)).permute(2, 0, 1) for s in (10, 30)]
    m = EnhanceMetric()
    m.update([x.float() / 255 for x in noisy], {"target": [a.float() / 255] * 2})
    got = m.compute()
    assert got["n"] == 2 and got["psnr"] == pytest.approx((psnr(noisy[0], a) + psnr(noisy[1], a)) / 2)
    assert got["psnr"] > 20 and 0 < got["ssim"] < 1


@pytest.mark.parametrize("name,scale,tile", [("dncnn", 1, 64), ("edsr", 2, 96), ("espcn", 3, 48), ("nafnet", 1, 320)])
def test_tiled_output_equals_the_whole_image_pass_everywhere(name, scale, tile):
    """Tiles overlap by the receptive radius and blend: no seam, no difference beyond float rounding,
    border pixels included, on an odd-sized image that needs a last, shifted tile."""
    torch.manual_seed(0)
    small = {"dncnn": {"depth": 8, "width": 16}, "nafnet": {"width": 8}}
    net = create_enhancer(name, scale=scale, **small.get(name, {})).eval()
    for p in net.parameters():  # random weights everywhere (EDSR's tail starts at zero)
        torch.nn.init.normal_(p, std=0.05)
    h, w = (150, 201) if name != "nafnet" else (350, 421)  # at least two tiles each way
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        whole = net(x)
        t = tiled(net, x, tile, pad=net.receptive_radius, scale=scale, blend=8, align=getattr(net, "align", 1))
    assert t.shape == whole.shape == (1, 3, h * scale, w * scale)
    assert (t - whole).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="too small"):
        tiled(net, x, 2 * net.receptive_radius, pad=net.receptive_radius, scale=scale)


def test_degradations_are_8_bit_seeded_and_the_right_strength():
    clean = torch.full((2, 3, 64, 64), 0.5)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = degrade.gaussian_noise(clean, 25, g()), degrade.gaussian_noise(clean, 25, g())
    assert torch.equal(a, b) and torch.equal(a, degrade.quantize(a))  # same seed, same noise; 8-bit levels
    assert (a - clean).std().item() * 255 == pytest.approx(25, rel=0.05)
    per_image = degrade.gaussian_noise(clean, torch.tensor([0.0, 50.0]), g())
    assert (per_image[0] - clean[0]).abs().max() <= 0.5 / 255 + 1e-7 and (per_image[1] - clean[1]).std() * 255 > 40
    low = degrade.downscale(torch.rand(1, 3, 64, 96), 4)
    assert low.shape == (1, 3, 16, 24) and torch.equal(low, degrade.quantize(low))
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade.downscale(torch.rand(1, 3, 63, 64), 2)
    assert degrade.modcrop(torch.zeros(3, 63, 65), 4).shape == (3, 60, 64)


# -- a real run ---------------------------------------------------------------------------------

OVERRIDES = ["task=enhancement", "data.name=photos", "model.name=dncnn", "model.pretrained=false",
             "model.kwargs={depth: 6, width: 24}", "data.image_size=40", "train.batch_size=8", "train.max_steps=6",
             "train.epochs=1", "train.ema=false", "train.threads=1", "enhance.tile=160"]


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    import visionsmith
    return visionsmith.train(None, overrides=OVERRIDES, out=tmp_path_factory.mktemp("enh") / "dn", report=True)


def test_a_denoising_run_is_scored_on_held_out_photos_beside_the_baselines(denoise_run):
    ev = json.loads((denoise_run / "eval.json").read_text())
    names = [r["image"] for r in ev["per_image"]]
    assert names == ["astronaut.png", "coffee.png", "chelsea.png", "china.jpg", "flower.jpg", "baboon.jpg",
                     "fruits.jpg", "butterfly.jpg"]
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    splits = get_task(load_config(denoise_run / "config.yaml")).build_datasets(0)
    trained_on = {p.split("@")[0] for p in splits["train"].paths} | {p.split("@")[0] for p in splits["val"].paths}
    assert not trained_on & set(names)  # no test photo is trained on or picks the best epoch
    info = json.loads((denoise_run / "run.json").read_text())
    assert info["data"]["leaks"]["test"] == {"count": 0, "of": 8, "examples": []}
    assert ev["psnr_input"] == pytest.approx(20.6, abs=0.5)  # sigma 25 on 8-bit photos
    base = ev["baselines"]
    assert set(base) == {"nlm", "tv", "wavelet"}
    assert base["nlm"]["psnr"] > ev["psnr_input"] + 5  # NLM at sigma 25 gains ~7-8 dB on these photos
    assert base["nlm"]["setting"] in (0.4, 0.5, 0.6, 0.8, 1.0)  # chosen on the validation photos
    with np.load(denoise_run / "eval_samples.npz") as z:
        assert z["input"].shape == z["output"].shape == z["clean"].shape == (8, 3, 128, 128)
        assert str(z["baseline_name"]) == max(base, key=lambda k: base[k]["psnr"])
    html = (denoise_run / "report.html").read_text()
    assert "PSNR" in html and "nlm" in html.lower()


def test_enhance_writes_pngs_notes_and_skips(denoise_run, tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    noisy = _noisy(skdata.coffee(), 25)
    Image.fromarray(noisy).save(src / "coffee.png")
    Image.fromarray(noisy[:, :, 0]).save(src / "grey.png")
    Image.fromarray(noisy[:4, :4]).save(src / "tiny.png")
    Image.fromarray(np.dstack([noisy, np.full(noisy.shape[:2], 128, np.uint8)])).save(src / "alpha.png")  # RGBA
    Image.fromarray(noisy[:, :, 1].astype(np.uint16) * 257).save(src / "deep.png")  # 16-bit grey
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = cli("enhance", denoise_run, src, "--out", out, check=False)
    assert res.returncode == 0, res.stderr
    assert "tiny.png" in res.stderr and "receptive field" in res.stderr and "broken.png" in res.stderr
    assert "Traceback" not in res.stderr
    restored = np.asarray(Image.open(out / "coffee.png"))
    assert restored.shape == noisy.shape and restored.dtype == np.uint8
    index = json.loads((out / "enhanced.json").read_text())
    notes = {Path(e["path"]).name: " ".join(e["notes"]) for e in index["images"]}
    assert "converted to RGB" in notes["grey.png"] and not notes["coffee.png"]
    assert "alpha channel composited on white" in notes["alpha.png"]
    assert "scaled to 8 bits" in notes["deep.png"] and "converted to RGB" in notes["deep.png"]
    assert np.asarray(Image.open(out / "deep.png")).shape == noisy.shape  # restored as colour, 8 bits
    # tiled (160 px tiles) and whole-image restoration give the same file
    whole = tmp_path / "whole"
    assert cli("enhance", denoise_run, src / "coffee.png", "--out", whole, "--tile", "0").returncode == 0
    diff = np.abs(np.asarray(Image.open(whole / "coffee.png")).astype(int) - restored.astype(int))
    assert diff.max() <= 1  # float rounding may move a value across a .5 boundary


def test_enhance_refuses_a_classification_run(tmp_path, cli):
    import visionsmith
    run = visionsmith.train(REPO / "recipes" / "digits.yaml", overrides=["train.max_steps=2", "train.epochs=1"],
                            out=tmp_path / "digits", report=False)
    res = cli("enhance", run, tmp_path, "--out", tmp_path / "o", check=False)
    assert res.returncode == 2 and "needs an enhancement run" in res.stderr and "Traceback" not in res.stderr


def test_a_super_resolution_run_upscales(tmp_path, cli):
    import visionsmith
    run = visionsmith.train(None, overrides=[o for o in OVERRIDES if not o.startswith("model.")] + [
        "model.name=espcn", "model.pretrained=false", "enhance.degradation=sr", "enhance.scale=2",
        "enhance.baselines=false", "data.image_size=48"], out=tmp_path / "sr", report=True)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["psnr_input"] > 20 and "psnr_y" in ev  # bicubic vs clean, on Y, border shaved
    small = skdata.chelsea()[::2, ::2]
    Image.fromarray(small).save(tmp_path / "small.png")
    assert cli("enhance", run, tmp_path / "small.png", "--out", tmp_path / "big").returncode == 0
    assert np.asarray(Image.open(tmp_path / "big" / "small.png")).shape == (small.shape[0] * 2, small.shape[1] * 2, 3)
    # the exported upsampler takes any size too, and gives scale-times larger images
    from visionsmith.export.runtime import OnnxModel
    assert cli("export", run, "--out", tmp_path / "sr.onnx").returncode == 0
    assert OnnxModel(tmp_path / "sr.onnx").predict_pixels(torch.rand(1, 3, 20, 28)).shape == (1, 3, 40, 56)


def test_export_to_onnx_takes_any_size_and_matches_pytorch(denoise_run, tmp_path, cli):
    """fp32 and static INT8 exports of a denoiser: the graph takes any height and width, fp32 gives
    PyTorch's pixels, INT8's PSNR drop on the held-out crops is measured and bounded; serve refuses the
    file (it serves the run folder, tile by tile)."""
    from visionsmith.engine.build import load_trained
    from visionsmith.export.runtime import OnnxModel
    res = cli("export", denoise_run, "--out", tmp_path / "dn.onnx", check=False)
    assert res.returncode == 0, res.stderr
    rec = json.loads((denoise_run / "export" / "export.json").read_text())
    par = next(r for r in rec["exports"].values() if not r["int8"])["parity"]["fp32"]
    assert par["n"] == 8 and par["max_abs_diff"] < 1e-3 and abs(par["psnr_drop_db"]) < 0.01
    ev = json.loads((denoise_run / "eval.json").read_text())
    assert abs(par["psnr_ref"] - ev["psnr"]) < 3  # crops of the same photos, scored against their own clean pixels
    _, model, _, _ = load_trained(denoise_run)
    onnx_model = OnnxModel(tmp_path / "dn.onnx")
    x = torch.from_numpy(_noisy(skdata.coffee()[:70, :90], 25)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = model.eval()(x)
    got = onnx_model.predict_pixels(x)
    assert got.shape == (1, 3, 70, 90) and np.abs(got - ref.numpy()).max() < 1e-3
    res = cli("export", denoise_run, "--int8", "static", "--out", tmp_path / "dn8.onnx", "--max-drop", "20",
              check=False)
    assert res.returncode == 0, res.stderr
    assert "PSNR drop" in res.stdout
    res = cli("serve", tmp_path / "dn.onnx", "--port", "0", check=False)
    assert res.returncode == 2 and "serve its run folder" in res.stderr and "Traceback" not in res.stderr


def test_swin2sr_from_a_local_folder_trains_reloads_and_upscales(tmp_path, cli):
    """A transformers Swin2SR saved with save_pretrained (as a downloaded one would be) fine-tunes as
    ``model.name=swin2sr model.pretrained=FOLDER``, its run reloads for ``enhance``, and a folder whose
    scale differs from the run's is a one-line error."""
    import visionsmith
    from visionsmith.models.enhancers import create_enhancer
    torch.manual_seed(0)
    tiny = {"embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 8, "upsampler": "pixelshuffledirect"}
    create_enhancer("swin2sr", scale=2, **tiny).net.save_pretrained(tmp_path / "swin")
    sr = ["model.name=swin2sr", f"model.pretrained={tmp_path / 'swin'}", "model.kwargs={}", "enhance.degradation=sr",
          "enhance.scale=2", "enhance.baselines=false", "enhance.tile=0", "data.image_size=48"]
    run = visionsmith.train(None, overrides=[o for o in OVERRIDES if not o.startswith(("model.", "enhance.tile"))] + sr,
                            out=tmp_path / "run", report=True)
    ev = json.loads((run / "eval.json").read_text())
    assert len(ev["per_image"]) == 8 and ev["psnr"] > 5  # a random tiny transformer after 6 steps: scored, not good
    # the run started from the folder's weights: 6 steps moved them far less than another random start is away
    from visionsmith.engine.build import load_trained
    folder = create_enhancer("swin2sr", scale=2, folder=str(tmp_path / "swin")).net.state_dict()
    torch.manual_seed(1)
    other = create_enhancer("swin2sr", scale=2, **tiny).net.state_dict()
    tuned = load_trained(run)[1].net.state_dict()
    keys = [k for k, v in folder.items() if v.dtype.is_floating_point and v.numel() > 100]
    moved = sum((tuned[k] - folder[k]).abs().mean().item() for k in keys)
    assert moved < 0.2 * sum((other[k] - folder[k]).abs().mean().item() for k in keys)
    small = skdata.chelsea()[::4, ::4]
    Image.fromarray(small).save(tmp_path / "small.png")
    assert cli("enhance", run, tmp_path / "small.png", "--out", tmp_path / "big").returncode == 0
    assert np.asarray(Image.open(tmp_path / "big" / "small.png")).shape == (small.shape[0] * 2, small.shape[1] * 2, 3)
    from visionsmith.errors import UserError
    with pytest.raises(UserError, match="dncnn trains from scratch here; only swin2sr"):
        create_enhancer("dncnn", folder=str(tmp_path / "swin"))
    with pytest.raises(UserError, match="upscales x2 with 3 channel"):
        visionsmith.train(None, overrides=[o for o in OVERRIDES if not o.startswith(("model.", "enhance.tile"))] +
                          [o.replace("scale=2", "scale=4") for o in sr], out=tmp_path / "x4", report=False)


def test_a_blind_denoiser_is_scored_at_every_noise_level_with_the_baselines():
    """``enhance.eval_sigmas``: the test evaluation adds one row per noise level (the same seeded noise,
    scaled), the row at ``enhance.sigma`` is the headline itself, and the baselines run at each level."""
    from visionsmith.config import Config
    from visionsmith.data.photos import PhotoDataset
    from visionsmith.tasks import get_task
    cfg = Config(task="enhancement")
    cfg.data.name = "photos"
    cfg.enhance.sigma, cfg.enhance.eval_sigmas, cfg.enhance.tile = 25.0, [10.0, 25.0, 50.0], 0
    task = get_task(cfg)
    photo = torch.from_numpy(skdata.astronaut()[100:196, 200:296].copy()).permute(2, 0, 1)
    ds = PhotoDataset([photo, photo.flip(-1).contiguous()], "photos/test", ["a.png", "b.png"])
    noisy10 = task.at_sigma(10).degraded_split(ds)[0][0]
    noisy50 = task.at_sigma(50).degraded_split(ds)[0][0]
    clean = photo.float() / 255
    assert (noisy10 - clean).std().item() * 255 == pytest.approx(10, rel=0.1)  # the levels asked for,
    assert (noisy50 - clean).std().item() * 255 == pytest.approx(45, rel=0.12)  # clipped at 0 and 1 at 50
    torch.manual_seed(0)
    model = create_enhancer("dncnn", in_chans=3, scale=1, depth=4, width=8).eval()
    m = task.evaluate(model, ds, None, 2, torch.device("cpu"), keep_outputs=True)
    rows = {r["sigma"]: r for r in m["by_sigma"]}
    assert list(rows) == [10.0, 25.0, 50.0]
    assert rows[25.0]["psnr"] == m["psnr"] and rows[25.0]["psnr_input"] == m["psnr_input"]
    assert rows[10.0]["psnr_input"] > rows[25.0]["psnr_input"] + 6 > rows[50.0]["psnr_input"] + 6
    assert rows[10.0]["psnr"] > rows[50.0]["psnr"]
    val = torch.from_numpy(skdata.coffee()[150:214, 250:314].copy()).permute(2, 0, 1)
    task._val = lambda: PhotoDataset([val], "photos/val", ["v.png"])  # a small validation set: a fast test
    extra = task.eval_artifacts(None, ds, m.pop("outputs"), m)
    for s, r in rows.items():
        assert r["baselines"]["nlm"]["psnr"] > r["psnr_input"] + 2  # NLM at each level, on that level's noise
    assert rows[25.0]["baselines"] == extra["baselines"]
    assert rows[10.0]["baselines"]["nlm"]["psnr"] > rows[50.0]["baselines"]["nlm"]["psnr"] + 4
    assert "sigma 50: PSNR" in task.summary({**m, **extra})
