"""Learned compression: the entropy coder and its tables, the codec models' bits against their real
files, the file format's refusals, MS-SSIM against pytorch_msssim, the BD-rate, and short real runs
through train, eval (with a classical codec), report, ``compress``/``decompress`` in fresh processes,
and ``rd``."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from visionsmith.metrics.compression import bd_rate, ms_ssim
from visionsmith.models.codecs import FactorizedDensity, GaussianConditional, block_basis, create_codec
from visionsmith.ops import bitstream
from visionsmith.ops.entropy import PRECISION, decode, encode, quantize_pmf

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def _cli(*args, check=True) -> subprocess.CompletedProcess:
    """A fresh interpreter: what a user gets (and a decoder that shares no state with the encoder)."""
    r = subprocess.run([sys.executable, "-m", "visionsmith", *map(str, args)], capture_output=True, text=True,
                       env=ENV, cwd=REPO, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _main(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (cheaper than a fresh interpreter): (exit code, stdout, stderr)."""
    from visionsmith.cli import main
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- entropy coding --------------------------------------------------------------------------------
def test_quantized_tables_sum_to_the_precision_and_keep_every_symbol_codable():
    pmf = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1e-12, 0.3, 0.7, 0.0], [0.1, 0.0, 0.9, 0.0]], dtype=torch.float64)
    rows = quantize_pmf(pmf)
    assert [len(r) for r in rows] == [2, 3, 3]  # the zero padding is not part of a table
    for r, p in zip(rows, pmf):
        assert r.sum() == 1 << PRECISION and r.min() >= 1
        np.testing.assert_allclose(r / r.sum(), p[:len(r)].numpy(), atol=2e-4)


def test_gaussian_latents_round_trip_exactly_and_cost_their_entropy():
    """Symbols drawn from the coder's own Gaussians: decoded bit for bit, the file within 1% of the
    ideal code length, and values far outside a table clamped (and reported as what was coded)."""
    g = torch.Generator().manual_seed(0)
    pmf, lo = GaussianConditional.tables()
    idx = torch.randint(0, 40, (1, 8, 32, 32), generator=g)  # scales 0.11 .. ~15
    scales = GaussianConditional.SCALES[idx]
    y = torch.round(torch.randn(idx.shape, generator=g, dtype=torch.float64) * scales)
    y[0, 0, 0, 0] = 10_000  # an outlier beyond any table
    data, coded = encode(y, idx, pmf, lo)
    assert coded[0, 0, 0, 0] < 10_000 and torch.equal(coded.flatten()[1:], y.flatten()[1:])
    assert torch.equal(decode(data, idx, pmf, lo), coded)
    ideal = -torch.log2(GaussianConditional()(coded.float(), scales.float()).double()).sum().item()
    assert len(data) * 8 == pytest.approx(ideal, rel=0.01, abs=64)


def test_factorized_density_tables_match_its_likelihoods():
    """Each (level, channel) has its own density, and the coding table of a level is its likelihoods."""
    torch.manual_seed(0)
    d = FactorizedDensity(4, levels=2)
    v = torch.arange(-3, 4, dtype=torch.float32)
    with torch.no_grad():
        lik = d(v.view(1, 1, 1, -1).expand(2, 4, 1, 7).contiguous(), torch.tensor([0, 1]))[:, :, 0]  # [2, 4, 7]
    assert not torch.allclose(lik[0], lik[1])
    for level in (0, 1):
        pmf, lo = d.tables(level)
        for c in range(4):
            cols = (v.long() - lo[c]).tolist()
            np.testing.assert_allclose(pmf[c, cols].numpy(), lik[level, c].numpy(), rtol=1e-4, atol=1e-6)
            assert pmf[c].sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name,kwargs", [("factorized", {}), ("hyperprior", {}),
                                         ("hyperprior", {"stages": 3})])
def test_codec_files_decode_to_the_encoders_latents_and_match_the_estimated_bits(name, kwargs):
    torch.manual_seed(0)
    net = create_codec(name, N=16, M=24, lmbdas=[0.004, 0.05], **kwargs).eval()
    x = torch.from_numpy(skdata.astronaut()[:128, :192].copy()).permute(2, 0, 1)[None].float() / 255
    for level in (0, 1):
        with torch.no_grad():
            out = net(x, level)
            streams = net.compress(x, level)
            est = sum(-torch.log2(p.double()).sum().item() for p in out["likelihoods"].values())
            hw = tuple(streams["y_hat"].shape[-2:])
            back = net.decompress({k: streams[k] for k in net.latents}, hw, level)
        assert torch.equal(back, net.synthesize(streams["y_hat"].float(), torch.tensor([level])))
        assert torch.allclose(back, out["x_hat"], atol=1e-4)  # the coded latents are the rounded ones
        real = sum(len(streams[k]) for k in net.latents) * 8
        assert real == pytest.approx(est, rel=0.05, abs=32 * 8)


def test_a_block_skip_codec_starts_as_an_exact_transform_coder():
    """Untrained, the DCT-started linear path alone carries the image: unquantised latents give it back
    exactly, and each finer rate level quantises less (fewer bits lost, more coefficients kept)."""
    basis = block_basis(3, 8, 192).flatten(1).double()
    assert torch.allclose(basis @ basis.T, torch.eye(192, dtype=torch.float64), atol=1e-5)  # orthonormal
    assert block_basis(3, 8, 200)[192:].abs().sum() == 0  # more channels than the block has: zero rows
    net = create_codec("hyperprior", N=16, M=192, lmbdas=[0.002, 0.013, 0.09], stages=3, block_skip=True).eval()
    assert (net.y_stride, net.stride) == (8, 32)
    x = torch.from_numpy(skdata.astronaut()[:128, :192].copy()).permute(2, 0, 1)[None].float() / 255
    psnrs, kept = [], []
    with torch.no_grad():
        for level in range(3):
            lv = torch.tensor([level])
            y = net.analyze(x, lv)
            assert torch.allclose(net.synthesize(y, lv), x, atol=1e-4)
            mse = (net.synthesize(torch.round(y), lv).clamp(0, 1) - x).pow(2).mean()
            psnrs.append(-10 * math.log10(mse.item()))
            kept.append((torch.round(y) != 0).float().mean().item())
    assert psnrs[0] < psnrs[1] < psnrs[2] and kept[0] < kept[1] < kept[2]
    assert 22 < psnrs[0] and psnrs[2] < 50


# -- the file format -------------------------------------------------------------------------------
def test_bitstream_header_refuses_other_models_damage_and_truncation():
    data = bitstream.pack(b"12345678", (3, 100, 70), 2, [b"zz" * 8, b"y" * 40])
    assert len(data) == 20 + 8 * 2 + 56  # header, two stream entries, the streams
    assert bitstream.unpack(data, b"12345678") == ((3, 100, 70), 2, [b"zz" * 8, b"y" * 40])
    with pytest.raises(bitstream.BitstreamError, match="another model"):
        bitstream.unpack(data, b"87654321")
    bad = bytearray(data)
    bad[-3] ^= 0x10
    with pytest.raises(bitstream.BitstreamError, match="damaged: stream 2 of 2"):
        bitstream.unpack(bytes(bad))
    with pytest.raises(bitstream.BitstreamError, match="truncated"):
        bitstream.unpack(data[:-5])
    with pytest.raises(bitstream.BitstreamError, match="not a visionsmith"):
        bitstream.unpack(b"\x89PNG" + data[4:])
    with pytest.raises(bitstream.BitstreamError, match="unexpected bytes"):
        bitstream.unpack(data + b"\0")


# -- metrics ---------------------------------------------------------------------------------------
def test_ms_ssim_equals_pytorch_msssim_on_a_real_photo():
    pytest.importorskip("pytorch_msssim")
    from pytorch_msssim import ms_ssim as reference
    a = torch.from_numpy(skdata.astronaut()[:333, :401].copy()).permute(2, 0, 1)  # odd sides: padded pooling
    g = torch.Generator().manual_seed(0)
    b = (a.float() + torch.randn(a.shape, generator=g) * 12).clamp(0, 255).round().to(torch.uint8)
    want = float(reference(b[None].double(), a[None].double(), data_range=255))
    assert ms_ssim(b, a) == pytest.approx(want, abs=1e-5)
    assert ms_ssim(a, a) == pytest.approx(1.0) and ms_ssim(b[:, :150], a[:, :150]) is None


def test_bd_rate_of_a_uniformly_cheaper_curve_is_its_saving():
    anchor = [{"bpp": b, "psnr": p} for b, p in [(0.15, 25), (0.4, 29), (0.9, 33), (1.8, 37)]]
    cheaper = [{"bpp": p["bpp"] * 0.75, "psnr": p["psnr"]} for p in anchor]
    assert bd_rate(anchor, cheaper) == pytest.approx(-25.0, abs=1e-6)
    assert bd_rate(cheaper, anchor) == pytest.approx(100 / 75 * 100 - 100, abs=1e-6)
    assert bd_rate(anchor, [{"bpp": 3.0, "psnr": 50}, {"bpp": 4.0, "psnr": 52}]) is None  # no common range


# -- real runs -------------------------------------------------------------------------------------
def _photo_folder(root: Path) -> Path:
    """Small real photographs split train/val/test (the embedded set is slower to score)."""
    crops = {"train": [(skdata.astronaut, 0, 0), (skdata.coffee, 100, 200), (skdata.chelsea, 50, 100),
                       (skdata.rocket, 100, 100)],
             "val": [(skdata.astronaut, 256, 256)], "test": [(skdata.chelsea, 100, 250), (skdata.coffee, 200, 0)]}
    for split, items in crops.items():
        (root / split).mkdir(parents=True)
        for i, (fn, y, x) in enumerate(items):
            Image.fromarray(fn()[y:y + 176, x:x + 192]).save(root / split / f"{fn.__name__}-{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny variable-rate hyperprior (two rates, stride 8 with the block-transform path) and a single-rate
    one (the published stride-16 design), through the real CLI."""
    tmp = tmp_path_factory.mktemp("codec")
    photos = _photo_folder(tmp / "photos")
    out = {}
    for name, lmbdas, kwargs in (("two", "[0.003,0.05]", "{N: 16, M: 24, stages: 3, block_skip: true}"),
                                 ("one", "[0.01]", "{N: 16, M: 24}")):
        run = tmp / name
        _cli("train", REPO / "recipes/compress-hyperprior.yaml", "data.name=images", f"data.root={photos}",
             "data.image_size=64", f"model.kwargs={kwargs}", "train.epochs=3", "train.batch_size=4",
             "train.amp=off", "train.channels_last=false", f"codec.lmbdas={lmbdas}", "codec.baselines=[jpeg]",
             "--out", run)
        out[name] = run
    return out, photos


def test_a_run_trains_evaluates_real_files_at_every_level_and_reports(runs):
    two, one = runs[0]["two"], runs[0]["one"]
    ev = json.loads((two / "eval.json").read_text())
    low, high = ev["levels"]
    assert low["lmbda"] == 0.003 and high["bpp"] > low["bpp"] > 0  # the larger lmbda spends more bits
    for lv in (low, high):
        rows = [r for r in ev["per_image"] if r["level"] == lv["level"]]
        assert len(rows) == 2 and lv["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows]))
        # the coder adds little to what the entropy model predicts (the header and its last words); it may
        # spend less: its tables give an outlier at most 16 bits where the likelihood floor charges 30, and
        # a model this small has many (the tight checks are the round-trip tests above)
        overhead = 64 * 8 / (176 * 192)  # the 36-byte header and the coder's last words, per pixel
        assert lv["bpp"] <= 1.05 * lv["bpp_estimated"] + overhead
        assert 5 < lv["psnr"] < 60
        assert "jpeg" in lv["same_psnr_bpp"]
    jpeg = ev["baselines"]["jpeg"]
    assert len(jpeg) >= 5 and all(b["bpp"] < a["bpp"] for a, b in zip(jpeg[1:], jpeg[:-1]))
    assert set(ev["bd_rate"]["jpeg"]) == {"psnr", "ms_ssim"}
    assert "bd_rate" not in json.loads((one / "eval.json").read_text())  # one point is not a curve
    _cli("report", two)
    page = (two / "report.html").read_text()
    assert "Side by side" in page and "BD-rate of this codec" in page
    with np.load(two / "eval_samples.npz") as z:
        assert z["original"].shape == z["output"].shape == z["jpeg"].shape


def test_compress_and_decompress_in_fresh_processes_are_bit_exact(runs, tmp_path):
    from visionsmith.engine.build import load_trained
    from visionsmith.tasks import get_task
    run = runs[0]["two"]
    src = runs[1] / "test" / os.listdir(runs[1] / "test")[0]
    r = _cli("compress", run, src, "-o", tmp_path / "a.vsic", "--level", "0")
    assert "bpp" in r.stdout and "at level 0 (lmbda 0.003" in r.stdout
    _cli("decompress", run, tmp_path / "a.vsic", "-o", tmp_path / "a.png")
    decoded = np.asarray(Image.open(tmp_path / "a.png"))
    # the encoder's own reconstruction, in this process
    cfg, model, _, _ = load_trained(run)
    task = get_task(cfg)
    u8 = torch.from_numpy(np.asarray(Image.open(src).convert("RGB")).copy()).permute(2, 0, 1)
    data = task.encode(model.eval(), u8, 0)
    assert data == (tmp_path / "a.vsic").read_bytes()  # the same bytes from another process
    mine, level = task.decode(model, data)
    assert level == 0 and np.array_equal(decoded, mine.permute(1, 2, 0).numpy())
    assert decoded.shape == np.asarray(Image.open(src)).shape


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    run, other = runs[0]["two"], runs[0]["one"]
    src = runs[1] / "test" / os.listdir(runs[1] / "test")[0]
    assert _main(capsys, "compress", run, src, "-o", tmp_path / "a.vsic")[0] == 0
    data = (tmp_path / "a.vsic").read_bytes()
    code, _, err = _main(capsys, "decompress", other, tmp_path / "a.vsic", "-o", tmp_path / "x.png")
    assert code == 2 and "another model" in err
    (tmp_path / "cut.vsic").write_bytes(data[: len(data) // 2])
    code, _, err = _main(capsys, "decompress", run, tmp_path / "cut.vsic", "-o", tmp_path / "x.png")
    assert code == 2 and "truncated" in err
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.vsic").write_bytes(bytes(flipped))
    code, _, err = _main(capsys, "decompress", run, tmp_path / "bad.vsic", "-o", tmp_path / "x.png")
    assert code == 2 and "damaged" in err and not (tmp_path / "x.png").exists()
    # a grey, a 16-bit and an alpha image are converted with a note, and round-trip
    grey = tmp_path / "grey.png"
    Image.open(src).convert("L").save(grey)
    deep = tmp_path / "deep.png"
    Image.fromarray((np.asarray(Image.open(src).convert("L")).astype(np.uint16) * 257)).save(deep)
    alpha = tmp_path / "alpha.png"
    Image.open(src).convert("RGBA").save(alpha)
    for f, note in ((grey, "converted to RGB"), (deep, "scaled to 8 bits"), (alpha, "alpha channel composited")):
        code, out, _ = _main(capsys, "compress", run, f, "-o", tmp_path / f"{f.stem}.vsic")
        assert code == 0 and note in out
        assert _main(capsys, "decompress", run, tmp_path / f"{f.stem}.vsic", "-o", tmp_path / f"{f.stem}.out.png")[0] == 0
        assert np.asarray(Image.open(tmp_path / f"{f.stem}.out.png")).shape == (*np.asarray(Image.open(src)).shape[:2], 3)
    code, _, err = _main(capsys, "compress", run, REPO / "README.md", "-o", tmp_path / "r.vsic")
    assert code == 2 and "README.md" in err
    code, _, err = _main(capsys, "compress", run, src, "-o", tmp_path / "r.vsic", "--level", "2")
    assert code == 2 and "2 rate level(s)" in err


def test_rd_draws_curves_and_bd_rates(runs, tmp_path):
    r = _cli("rd", *runs[0].values(), "--out", tmp_path / "rd")
    body = json.loads((tmp_path / "rd" / "rd.json").read_text())
    two = body["learned"]["hyperprior (two)"]
    assert len(two) == 2 and two[0]["bpp"] < two[1]["bpp"] and len(body["learned"]["hyperprior"]) == 1
    assert set(body["bd_rate_percent"]["hyperprior (two)"]) == {"jpeg"}
    assert body["bd_rate_percent"]["hyperprior"]["jpeg"]["psnr"] is None  # one point: no curve
    assert (tmp_path / "rd" / "rd.png").read_bytes()[:4] == b"\x89PNG"
    assert "BD-rate of hyperprior (two) vs jpeg" in r.stdout


def test_compress_refuses_a_run_of_another_task(tmp_path):
    import visionsmith
    run = visionsmith.train(REPO / "recipes" / "digits.yaml", overrides=["train.max_steps=2", "train.epochs=1"],
                            out=tmp_path / "digits", report=False)
    Image.fromarray(skdata.coffee()).save(tmp_path / "coffee.png")
    r = _cli("compress", run, tmp_path / "coffee.png", "-o", tmp_path / "x.vsic", check=False)
    assert r.returncode == 2 and "needs a learned-compression run" in r.stderr and "Traceback" not in r.stderr


def test_config_mistakes_name_the_key():
    from visionsmith.config import ConfigError, load_config, validate
    from visionsmith.data.errors import DataError
    from visionsmith.methods.registry import method_spec
    from visionsmith.tasks import get_task, task_names
    task_names(), method_spec("rate_distortion")  # every task's and method's config rules registered
    recipe = REPO / "recipes/compress-hyperprior.yaml"
    for overrides, msg in ((["method=supervised"], "method=rate_distortion"),
                           (["model.name=resnet18"], "not a learned codec"),
                           (["codec.lmbdas=[0.05,0.01]"], "ascending"),
                           (["codec.baselines=[png]"], "codec.baselines"),
                           (["task=classification", "data.name=digits", "model.name=simple_cnn"], "written for task compression"),
                           (["data.image_size=80"], "multiple of 32")):
        with pytest.raises((ConfigError, DataError), match=msg):
            cfg = load_config(recipe, overrides)
            validate(cfg)
            get_task(cfg).build_model(0)


def test_a_variable_rate_run_resumes_bit_exactly(runs, tmp_path):
    """Stopped mid-epoch (between checkpoints) and resumed: the same weights, gains and densities, and
    the same validation rows (each image's rate level comes from the loop's seeded generator)."""
    from safetensors.torch import load_file
    from visionsmith.config import load_config
    from visionsmith.engine.loop import fit
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes/compress-hyperprior.yaml", [
        "data.name=images", f"data.root={runs[1]}", "data.image_size=64", "model.kwargs={N: 8, M: 12}",
        "train.epochs=2", "train.batch_size=4", "train.amp=off", "train.channels_last=false",
        "train.checkpoint_every=3", "train.threads=1", "codec.lmbdas=[0.003,0.05]", "codec.baselines=[]"])
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=5)
    fit(cfg, resume=part)
    a, b = load_file(str(full / "checkpoints/last.safetensors")), load_file(str(part / "checkpoints/last.safetensors"))
    assert a.keys() == b.keys() and "log_gain" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    val = lambda run: [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                       if r["split"] == "val"]
    assert val(full) == val(part)
