"""Attacks in pixel space, adversarial training (PGD-AT, fast FGSM, TRADES), robustness curves."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionsmith import api
from visionsmith.config import ConfigError, load_config
from visionsmith.engine.build import build_transforms, load_trained
from visionsmith.workflows.robustness import parse_eps, robust_accuracy
from visionsmith.methods.adversarial import fgsm, pgd, project

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A plainly trained digits CNN (~96% test) and [0, 1] test pixels as evaluation sees them."""
    torch.set_num_threads(2)
    run = api.train(DIGITS, out=tmp_path_factory.mktemp("adv") / "plain")
    cfg, model, classes, _ = load_trained(run)
    _, eval_tf = build_transforms(cfg, model)
    from visionsmith.data import build_datasets
    ds = build_datasets(cfg.data, cfg.seed)["test"]
    pixels = eval_tf(ds.images[:128])  # [0, 1] pixels: the model normalises them itself
    return run, model.eval(), pixels, ds.labels[:128]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(digits_run, norm, eps):
    _, model, x, y = digits_run
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps, steps=10, norm=norm)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
        acc_clean = (model(x).argmax(-1) == y).float().mean()
        acc_adv = (model(x_adv).argmax(-1) == y).float().mean()
    assert adv > clean * 1.5 and acc_adv < acc_clean
    assert not any(p.grad is not None for p in model.parameters())  # only the input was differentiated


def test_more_steps_and_bigger_eps_are_stronger(digits_run):
    _, model, x, y = digits_run
    torch.manual_seed(0)
    accs = [robust_accuracy(model, x, y, e, "pgd", steps=10) for e in (0.0, 0.05, 0.15)]
    assert accs[0] > accs[1] > accs[2]
    assert accs[0] == float((model(x).argmax(-1) == y).float().mean())  # eps 0 is clean accuracy
    fgsm_acc = robust_accuracy(model, x, y, 0.05, "fgsm")
    assert fgsm_acc >= accs[1]  # one step is never stronger than ten from the same budget (here)


def test_fgsm_is_one_signed_step_of_eps(digits_run):
    _, model, x, y = digits_run
    x_adv = fgsm(model, x, y, 0.05)
    inside = (x > 0.05) & (x < 0.95)  # pixels the box cannot clip
    d = (x_adv - x)[inside].abs()
    assert torch.allclose(d[d > 0], torch.full_like(d[d > 0], 0.05), atol=1e-6)
    assert (d > 0).float().mean() > 0.9  # the gradient is non-zero almost everywhere


def test_package_level_api():
    import visionsmith
    assert visionsmith.robustness is api.robustness and visionsmith.prune is api.prune
    with pytest.raises(AttributeError):
        visionsmith.no_such_function  # noqa: B018


def test_project_l2_and_box():
    x = torch.full((2, 1, 4, 4), 0.5)
    far = x + torch.randn_like(x) * 10
    p = project(far, x, 0.3, "l2")
    assert float((p - x).flatten(1).norm(dim=1).max()) <= 0.3 + 1e-6
    assert float(p.min()) >= 0 and float(p.max()) <= 1


def test_the_model_takes_pixels_and_normalises_them_itself(digits_run):
    run, model, x, _ = digits_run
    norm = model.pixel_norm
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    with torch.no_grad():  # the old path: normalised outside, the network without its pixel_norm
        ref = model.forward_head(model.features((x - norm.mean) / norm.std))
        assert torch.equal(model(x), ref)


def test_bad_eps_is_a_clear_error(tmp_path, cli, digits_run):
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        parse_eps("0,1/255,8")
    with pytest.raises(ValueError, match="not a number"):
        parse_eps("0,abc")
    (tmp_path / "r.yaml").write_text(DIGITS.read_text())
    with pytest.raises(ConfigError, match=r"adversarial.eps=2 is outside \[0, 1\]"):
        load_config(tmp_path / "r.yaml", ["method=adversarial", "adversarial.eps=2"])
    res = cli("robustness", digits_run[0], "--eps", "0,-0.1", check=False)
    assert res.returncode == 2 and "eps=-0.1 is outside [0, 1]" in res.stderr and "Traceback" not in res.stderr


def test_robustness_command_writes_curves_plot_and_report(cli, digits_run):
    run = digits_run[0]
    res = cli("robustness", run, "--eps", "0,0.05,0.1", "--steps", "5", "--images", "200")
    assert "PGD-5 (linf) on 200 test images" in res.stdout and "(clean)" in res.stdout
    cli("robustness", run, "--attack", "fgsm", "--eps", "0,0.1", "--images", "200")
    curves = json.loads((run / "robustness.json").read_text())
    assert set(curves) == {"pgd-linf-5", "fgsm-linf"}  # a second attack adds a curve, keeps the first
    pgd_pts = {p["eps"]: p["acc"] for p in curves["pgd-linf-5"]["points"]}
    clean = json.loads((run / "eval.json").read_text())["acc"]
    assert pgd_pts[0.0] > pgd_pts[0.05] > pgd_pts[0.1]
    assert abs(pgd_pts[0.0] - clean) < 0.05  # first 200 of the test images vs all of them
    assert (run / "robustness.png").stat().st_size > 5000
    html = (run / "report.html").read_text()
    assert 'id="robustness"' in html and "PGD-5 (L-inf)" in html and "FGSM (L-inf)" in html


def _robust_acc(run: Path, eps: float = 0.1) -> float:
    return api.robustness(run, f"0,{eps}", steps=10, images=300)["points"][1]["acc"]


def test_pgd_training_makes_a_model_robust(tmp_path, digits_run):
    """The whole point: at the same budget, PGD-AT keeps far more accuracy under PGD than plain training."""
    torch.set_num_threads(2)
    adv = api.train(DIGITS, ["method=adversarial", "adversarial.eps=0.1", "adversarial.steps=5",
                             "adversarial.eval_images=100", "train.early_stop.metric=val/robust_acc"],
                    out=tmp_path / "pgd-at")
    plain_rob, adv_rob = _robust_acc(digits_run[0]), _robust_acc(adv)
    assert adv_rob > plain_rob + 0.2, (plain_rob, adv_rob)
    val = [json.loads(x) for x in (adv / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert all(0 <= r["robust_acc"] <= r["acc"] + 0.05 for r in val)  # the monitor ran every epoch
    assert 'id="robustness"' in (adv / "report.html").read_text()


@pytest.mark.parametrize("kind,parts", [("trades", {"loss_nat", "loss_rob"}), ("fgsm", set())])
def test_trades_and_fast_fgsm_train(tmp_path, kind, parts):
    run = api.train(DIGITS, ["method=adversarial", f"adversarial.kind={kind}", "adversarial.eps=0.1",
                             "adversarial.steps=3", "adversarial.eval_images=64", "train.epochs=2"],
                    out=tmp_path / kind)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(parts <= set(r) for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    assert json.loads((run / "run.json").read_text())["method"] == "adversarial"


def test_adversarial_training_resumes_exactly(resumes_exactly, tmp_path):
    cfg = load_config(DIGITS, ["method=adversarial", "adversarial.steps=2", "adversarial.eval_images=32",
                               "train.epochs=1", "train.checkpoint_every=4", "model.drop_rate=0.2"])
    resumes_exactly(cfg, stop_at=9)  # random starts and dropout replay bit for bit


def test_adversarial_training_under_bf16_autocast(tmp_path):
    run = api.train(DIGITS, ["method=adversarial", "adversarial.steps=2", "adversarial.eval_images=32",
                             "train.epochs=1", "train.amp=bf16"], out=tmp_path / "bf16")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["split"] == "train")
    assert json.loads((run / "eval.json").read_text())["acc"] > 0.3


@pytest.mark.slow  # ~15-30 s; DDP itself is covered by tests/engine/test_ddp.py in the default run
def test_adversarial_training_under_ddp(tmp_path, torchrun_available):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", "train",
                          str(DIGITS), "train.epochs=1", "train.threads=1", "method=adversarial",
                          "adversarial.steps=2", "adversarial.eval_images=64", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=e, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["env"]["world_size"] == 2 and info["method"] == "adversarial" and info["status"] == "done"
    val = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert "robust_acc" in val[-1]
