"""Generation (diffusion, VAE): the Frechet distance and precision/recall against direct
computations, exact resume of a diffusion run, the scores of a perfect and of a useless generator,
a short VAE run that beats its untrained self, and `visionsmith sample` with every bad argument."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from safetensors.torch import load_file

from visionsmith.config import ConfigError, load_config
from visionsmith.engine.build import build_transforms
from visionsmith.engine.checkpoint import load_checkpoint
from visionsmith.engine.loop import fit
from visionsmith.errors import UserError
from visionsmith.metrics.generation import feature_stats, frechet_distance, precision_recall
from visionsmith.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


def _fd_direct(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (full-rank data only)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_frechet_distance_matches_the_direct_formula_and_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(0.3, 1.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(_fd_direct(a, b), rel=1e-8)
    assert frechet_distance(*feature_stats(a), *feature_stats(a)) == pytest.approx(0, abs=1e-8)
    # N(0, I) vs N(m, 4 I) in d dims: |m|^2 + d (1 - 2)^2
    d, m = 5, np.arange(5.0)
    assert frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(m @ m + d, rel=1e-12)
    # fewer samples than dimensions: singular covariances, still finite and symmetric
    x, y = rng.normal(size=(8, 20)), rng.normal(size=(8, 20)) + 1
    f1, f2 = frechet_distance(*feature_stats(x), *feature_stats(y)), frechet_distance(*feature_stats(y), *feature_stats(x))
    assert np.isfinite(f1) and f1 == pytest.approx(f2, rel=1e-6)


def test_precision_recall_match_a_brute_force_count():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.8, 0.6, size=(50, 3))
    k = 3

    def radii(x):
        return np.array([np.sort(np.linalg.norm(x - p, axis=1))[k] for p in x])

    rr, rf = radii(real), radii(fake)
    want_p = np.mean([any(np.linalg.norm(f - r) <= rr[j] for j, r in enumerate(real)) for f in fake])
    want_r = np.mean([any(np.linalg.norm(r - f) <= rf[j] for j, f in enumerate(fake)) for r in real])
    p, r = precision_recall(real, fake, k)
    assert (p, r) == pytest.approx((want_p, want_r))
    assert 0 < p < 1 and 0 < r < 1  # the data is built to be partly overlapping
    assert precision_recall(real, real + 100, k) == (0.0, 0.0)


# -- a feature classifier and tiny generation runs --------------------------------------------

@pytest.fixture(scope="module")
def feature_run(tmp_path_factory):
    """The shipped feature-classifier recipe, shortened (a few hundred steps: about 85% accuracy)."""
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "fd-classifier-fashion-mnist.yaml",
                      ["train.epochs=1", "data.train_limit=8000", "train.log_every=1000"])
    return fit(cfg, out=tmp_path_factory.mktemp("gen") / "features")


def _gen_overrides(feature_run, *extra):
    return [f"gen.feature_run={feature_run}", "data.train_limit=640", "train.batch_size=32", "train.threads=1",
            "gen.val_samples=40", "gen.eval_samples=60", "train.log_every=5", "train.eval_batch_size=100", *extra]


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


TINY_DIFFUSION = ["model.kwargs.widths=[8,16]", "gen.timesteps=50", "gen.steps=5", "gen.val_steps=3"]


@pytest.mark.parametrize("recipe,extra", [
    ("diffusion", TINY_DIFFUSION),
    ("gan", ["model.kwargs.width=16", "gen.r1=1.0"]),  # two optimizers, the discriminator, spectral norm, R1
])
def test_resume_is_bit_exact(tmp_path, feature_run, recipe, extra):
    """A conditional diffusion run (class dropout, EMA, bf16 autocast) or GAN run stopped mid-epoch and
    resumed equals the uninterrupted run: weights, EMA, both optimizers and the discriminator of a GAN,
    and the validation scores of its samples."""
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / f"{recipe}-fashion-mnist.yaml",
                      _gen_overrides(feature_run, *extra, "train.epochs=2", "train.checkpoint_every=7"))
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=9)
    fit(cfg, resume=part)
    for name in ("last", "best"):
        a, b = (load_file(str(r / "checkpoints" / f"{name}.safetensors")) for r in (full, part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (_, sa, _), (_, sb, _) = (load_checkpoint(r / "checkpoints") for r in (full, part))
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    if recipe == "gan":
        assert set(sa["optimizer"]) == {"d", "g"} and any(k.startswith("disc.") for k in sa["method"])
        assert all(torch.equal(sa["method"][k], sb["method"][k]) for k in sa["method"])
        exp_a, exp_b = (sd["optimizer"]["d"]["state"][0]["exp_avg"] for sd in (sa, sb))
        assert torch.equal(exp_a, exp_b)
        train_rows = [x for x in rows_of(full) if x["split"] == "train"]
        assert all("loss_d" in x and "r1" in x for x in train_rows)
    rows = [rows_of(r) for r in (full, part)]
    val = [[x for x in rs if x["split"] == "val"] for rs in rows]
    assert val[0] == val[1] and len(val[0]) == 2 and "fd" in val[0][0]


class _Replay(torch.nn.Module):
    """A "generator" that returns given images: real ones (a perfect model) or noise (a useless one)."""
    kind = "replay"

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.i = images, 0
        self.w = torch.nn.Parameter(torch.zeros(1))  # a device to sample on

    def sample(self, n, labels=None, **_):
        out = self.images[self.i:self.i + n]
        self.i += n
        return out * 2 - 1


def test_scores_of_a_perfect_and_of_a_useless_generator(feature_run):
    """Real training images scored as samples sit at the floor, with high precision and recall and the
    classifier's own accuracy as "requested class"; uniform noise is far off on every score."""
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "diffusion-fashion-mnist.yaml", _gen_overrides(feature_run, "gen.val_samples=400"))
    task = get_task(cfg)
    data = task.build_datasets(cfg.seed)
    _, eval_tf = build_transforms(cfg)
    train, val = data["train"], data["val"]
    # a perfect conditional generator: real training images of the requested classes, in request order
    want = task.sample_labels(400, len(train.classes))
    by_class = {k: (train.labels == k).nonzero().flatten().tolist() for k in range(10)}
    idx = torch.tensor([by_class[int(k)].pop() for k in want])
    good = task.evaluate(_Replay(eval_tf(train.images[idx], None)), val, eval_tf, 100, torch.device("cpu"))
    noise = task.evaluate(_Replay(torch.rand(400, 1, 32, 32, generator=torch.Generator().manual_seed(0))), val,
                          eval_tf, 100, torch.device("cpu"))
    assert good["fd"] < 2 * good["fd_floor"] + 1 and noise["fd"] > 20 * good["fd"]
    assert good["precision"] > 0.6 and good["recall"] > 0.6 and noise["precision"] < 0.05
    assert good["class_acc"] == pytest.approx(good["class_acc_real"], abs=0.08) and good["class_acc"] > 0.7
    assert noise["class_acc"] < 0.3


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, feature_run):
    torch.set_num_threads(1)
    from visionsmith.api import train
    cfg = load_config(REPO / "recipes" / "vae-fashion-mnist.yaml",
                      _gen_overrides(feature_run, "data.train_limit=3000", "train.epochs=3", "gen.eval_samples=200"))
    return train(cfg, out=tmp_path_factory.mktemp("gen") / "vae")


def test_vae_run_learns_logs_bits_per_dim_and_writes_its_report(vae_run):
    rows = [json.loads(x) for x in (vae_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert all("bits_per_dim" in r and "loss_kl" in r for r in train)
    assert train[-1]["bits_per_dim"] < train[0]["bits_per_dim"] - 1
    assert val[-1]["fd"] < val[0]["fd"]  # samples move towards the real images
    ev = json.loads((vae_run / "eval.json").read_text())
    assert ev["n"] == 200 and ev["fd"] > ev["fd_floor"] > 0 and 0 <= ev["precision"] <= 1
    assert ev["class_acc"] > 0.13  # a class-conditional VAE after 3 short epochs: above chance (0.1, sd 0.02 at n=200)
    html = (vae_run / "report.html").read_text()
    assert 'id="samples"' in html and 'id="progress"' in html and 'id="terms"' in html
    previews = np.load(vae_run / "val_samples.npz")  # the same 20 requests drawn at every validation
    assert sorted(previews.files) == ["e1", "e2", "e3"] and previews["e3"].shape == (20, 1, 32, 32)
    assert not np.array_equal(previews["e1"], previews["e3"])
    walks = np.load(vae_run / "eval_samples.npz")["walks"]  # 4 interpolation walks of 8 in the report
    assert walks.shape == (32, 1, 32, 32) and "Interpolations" in html


def test_sample_is_reproducible_and_writes_grid_and_images(vae_run, tmp_path, cli):
    cli("sample", vae_run, "--n", "12", "--class", "7", "--seed", "3", "--out", tmp_path / "a")
    cli("sample", vae_run, "--n", "12", "--class", "7", "--seed", "3", "--out", tmp_path / "b")
    cli("sample", vae_run, "--n", "12", "--class", "7", "--seed", "4", "--out", tmp_path / "c")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(["grid.png", "samples.json"] + [f"sample_{i:04d}.png" for i in range(12)])
    same = lambda x, y: (tmp_path / x / "grid.png").read_bytes() == (tmp_path / y / "grid.png").read_bytes()  # noqa: E731
    assert same("a", "b") and not same("a", "c")
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["labels"] == [7] * 12 and meta["classes"][0] == "Sneaker"
    assert np.asarray(Image.open(tmp_path / "a" / "sample_0000.png")).shape == (32, 32)


def test_sample_refuses_bad_arguments_in_one_line(vae_run, tmp_path, feature_run, cli):
    from visionsmith.api import sample
    cases = [
        (dict(n=0), "--n 0"),
        (dict(klass=10), "--class 10 is out of range"),
        (dict(klass=-1), "--class -1 is out of range"),
        (dict(steps=5), "diffusion settings"),
        (dict(guidance=2.0), "diffusion settings"),
    ]
    for kw, msg in cases:
        with pytest.raises(UserError, match=msg):
            sample(vae_run, out=tmp_path / "x", **kw)
    with pytest.raises(UserError, match="is a classification run"):
        sample(feature_run, out=tmp_path / "x")
    res = cli("sample", feature_run, "--out", tmp_path / "x", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "generation run" in res.stderr


def test_diffusion_sampling_arguments_are_checked(tmp_path, feature_run):
    """--steps beyond the schedule, --class on an unconditional model, guidance without class dropout."""
    from visionsmith.api import sample
    torch.set_num_threads(1)
    cfg = load_config(REPO / "recipes" / "diffusion-fashion-mnist.yaml",
                      _gen_overrides(feature_run, *TINY_DIFFUSION, "gen.conditional=false", "gen.guidance=1.0",
                                     "train.max_steps=3", "train.epochs=1"))
    run = fit(cfg, out=tmp_path / "uncond")
    with pytest.raises(UserError, match="trained on a 50-step schedule"):
        sample(run, steps=51, out=tmp_path / "x")
    with pytest.raises(UserError, match="trained without classes"):
        sample(run, klass=1, out=tmp_path / "x")
    with pytest.raises(UserError, match="class dropout"):
        sample(run, guidance=3.0, out=tmp_path / "x")
    res = sample(run, n=4, steps=2, out=tmp_path / "ok")
    assert res.images.shape == (4, 1, 32, 32) and res.settings["steps"] == 2
    from visionsmith.api import evaluate
    ev = evaluate(run)  # an unconditional model has no requested-class score
    assert ev["class_acc"] is None and "class_acc_real" not in ev and ev["fd"] > 0
    assert json.loads((run / "run.json").read_text())["test"]["class_acc"] is None
    with pytest.raises(ConfigError, match="class dropout"):
        load_config(REPO / "recipes" / "diffusion-fashion-mnist.yaml", ["gen.class_dropout=0"])


def test_interpolation_walks_smoothly_between_two_samples(vae_run, tmp_path):
    """Consecutive images of a latent walk are closer to each other than the two ends are."""
    from visionsmith.workflows.sample import interpolate, slerp
    res = interpolate(vae_run, n=8, rows=2, seed=5, out=tmp_path)
    x = res.images.float().view(2, 8, -1)
    step = (x[:, 1:] - x[:, :-1]).abs().mean()
    ends = (x[:, -1] - x[:, 0]).abs().mean()
    assert step < ends / 2 and res.labels == [0, 1] and (tmp_path / "interpolation.png").is_file()
    a, b = torch.randn(32), torch.randn(32)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    with pytest.raises(UserError, match="at least 2 images"):
        interpolate(vae_run, n=1, out=tmp_path)


def test_config_and_feature_run_mistakes_are_one_line_errors(tmp_path):
    from visionsmith.tasks.generation import ensure_feature_run
    recipe = REPO / "recipes" / "diffusion-fashion-mnist.yaml"
    with pytest.raises(ConfigError, match="trained with method=diffusion, not vae"):
        load_config(recipe, ["method=vae"])
    with pytest.raises(ConfigError, match=r"gen.steps and gen.val_steps must lie in \[1, gen.timesteps=1000\]"):
        load_config(recipe, ["gen.steps=1001"])
    with pytest.raises(ConfigError, match="not a generative model"):
        load_config(recipe, ["model.name=resnet18"])
    with pytest.raises(UserError, match="is not a run folder"):
        ensure_feature_run(str(tmp_path), "fashion_mnist")
    with pytest.raises(UserError, match="is the Fashion-MNIST classifier"):
        ensure_feature_run("auto", "digits")


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_both_samplers_invert_the_training_target(prediction):
    """Given the exact training target (the noise, or the velocity) at a timestep, DDPM's and DDIM's steps
    recover the clean image: the prediction type is wired the same way into training and sampling."""
    from visionsmith.models.generators import DiffusionUNet
    m = DiffusionUNet(widths=(8, 16), timesteps=100, prediction=prediction)
    x0 = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([60, 60])
    xt = m.train_scheduler.add_noise(x0, noise, t)
    target = noise if prediction == "epsilon" else m.train_scheduler.get_velocity(x0, noise, t)
    for sched in (m.train_scheduler, m._ddim):
        sched.set_timesteps(100)
        out = sched.step(target, 60, xt, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(out.pred_original_sample, x0, atol=1e-4)


def test_guidance_weight_zero_is_unconditional_sampling():
    """eps = eps_uncond + w (eps_cond - eps_uncond): at w = 0 a class request draws what the null class draws."""
    from visionsmith.models.generators import DiffusionUNet
    torch.manual_seed(0)
    m = DiffusionUNet(widths=(8, 16), timesteps=20, num_classes=10).eval()
    m.unet.class_embedding.weight.data.normal_(0, 5.0)  # an untrained network whose class embedding matters
    noise = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 4, 7])
    unc = m.sample(3, None, steps=5, noise=noise)
    assert torch.allclose(m.sample(3, y, steps=5, guidance=0.0, noise=noise), unc, atol=1e-5)
    cond = m.sample(3, y, steps=5, guidance=1.0, noise=noise)
    assert (cond - unc).abs().max() > 0.1
    assert (m.sample(3, y, steps=5, guidance=3.0, noise=noise) - cond).abs().max() > 0.1  # guidance pushes further


def test_guided_ddim_steps_stay_on_the_path_of_their_clipped_estimate():
    """An oracle denoiser for two point masses (the class: every pixel +1, like Fashion-MNIST's clipped
    extremes; the null class: 0).  With guidance 2 its clean-image estimate is 2, clipped to 1.  Each DDIM
    step must then move along the path that the clipped estimate implies, x_t = sqrt(a_t) * 1 + sqrt(1 - a_t)
    * z with one z for every step, at 50 steps as at 10 (diffusers' default steps with the unclipped noise
    instead, and x_t drifts off that path more the more steps it takes: the bug behind '50 guided steps are
    worse than 10')."""
    from visionsmith.models.generators import DiffusionUNet

    class Oracle(DiffusionUNet):
        seen: list = []

        def forward(self, x, t, y):
            ab = self.train_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            x0 = (y < self.num_classes).float().view(-1, 1, 1, 1)              # class -> 1, null -> 0
            self.seen.append((x[y < self.num_classes], ab[y < self.num_classes]))
            return (x - ab.sqrt() * x0) / (1 - ab).sqrt()                      # the exact noise

    m = Oracle(widths=(8, 16), timesteps=1000, num_classes=10).eval()
    z = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for steps in (10, 50):
        m.seen.clear()
        out = m.sample(2, torch.tensor([3, 7]), steps=steps, guidance=2.0, noise=z)
        assert torch.allclose(out, torch.ones_like(out))
        implied = [(x - ab.sqrt()) / (1 - ab).sqrt() for x, ab in m.seen]  # the noise each input carries
        assert all(torch.allclose(n, implied[0], atol=1e-3) for n in implied[1:])


def test_inception_features_are_checked_deterministic_and_separate_real_from_noise():
    """FID's network is the hashed asset; its features of real Fashion-MNIST images are finite, repeat
    exactly, and two halves of the real images are closer to each other than to noise images."""
    from visionsmith.assets import get_asset, resolve
    from visionsmith.data.fashion_mnist import load_split
    from visionsmith.metrics.generation import feature_stats, frechet_distance
    from visionsmith.metrics.inception import InceptionFeatures
    assert resolve("inception-v3-fid").name == get_asset("inception-v3-fid").filename
    images = load_split("test").images[:24]  # uint8 [24, 1, 28, 28]
    net = InceptionFeatures()
    f = net(images, batch_size=12)
    assert f.shape == (24, 2048) and np.isfinite(f).all() and (f >= 0).all()  # pooled after a ReLU
    assert np.array_equal(f[:12], net(images[:12]))
    noise = torch.randint(0, 256, (12, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    real_real = frechet_distance(*feature_stats(f[:12]), *feature_stats(f[12:]))
    real_noise = frechet_distance(*feature_stats(f[:12]), *feature_stats(net(noise)))
    assert 0 < real_real < real_noise
