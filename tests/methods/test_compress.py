"""Pruning: structured pruning really shrinks the model, unstructured sparsity is what was asked,
pruned run folders reload without the source, fine-tuning wins accuracy back, bad input is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visionsmith as vs
from visionsmith.api import prune
from visionsmith.config import ConfigError, load_config
from visionsmith.engine.build import build_model, load_trained
from visionsmith.engine.checkpoint import CheckpointError, save_weights
from visionsmith.workflows.prune import prune_config, pruned_from_source
from visionsmith.config import save_config
from visionsmith.surgery.compress import (check_amount, count_macs, count_params, fold_masks, make_permanent,
                                          prunable_layers, prune_structured, prune_unstructured,
                                          recalibrate_batchnorm, reshape_to_state_dict, sparsity)
from visionsmith.models import create_model

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # 2 shared cores: one thread each is faster and steadier


# ---------------------------------------------------------------------------------------------
# The algorithms, on untrained models


@pytest.mark.parametrize("name,chans", [("simple_cnn", 1), ("resnet20", 3), ("mobilenetv2", 3),
                                        ("efficientnet_lite0", 3)])
def test_structured_pruning_shrinks_the_model_and_keeps_output_shape(name, chans):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=chans).eval()
    x = torch.randn(3, chans, 32, 32)
    params, macs = count_params(model), count_macs(model, x[:1])
    prune_structured(model, 0.5, x[:1])
    out = model(x)
    assert out.shape == (3, 7)  # the classes are never pruned
    # Half the channels of each layer: about a quarter of the weights and of the work is left.
    assert count_params(model) < 0.35 * params and count_macs(model, x[:1]) < 0.35 * macs
    assert model.num_features == model.get_classifier().in_features < create_model(name, num_classes=7).num_features
    # A fresh model narrowed to the state dict's shapes is the same function (how run folders reload).
    fresh = reshape_to_state_dict(create_model(name, num_classes=7, in_chans=chans), model.state_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh.eval()(x), out)


def test_depthwise_convs_stay_depthwise_after_pruning():
    model = create_model("mobilenetv2", num_classes=5)
    prune_structured(model, 0.5, torch.randn(1, 3, 32, 32))
    dw = model.features[2].conv[1][0]  # the 3x3 depthwise conv of an inverted residual
    assert dw.groups == dw.in_channels == dw.out_channels == dw.weight.shape[0] and dw.weight.shape[1] == 1
    assert dw.out_channels < 96


def test_unstructured_sparsity_equals_the_amount_per_layer_and_globally():
    model = create_model("resnet8", num_classes=10)
    prune_unstructured(model, 0.3)
    for name, m in prunable_layers(model):
        n = m.weight.numel()
        assert sparsity(model)["layers"][name] == round(0.3 * n) / n
    assert model.get_classifier().weight.ne(0).all()  # the classifier is left alone

    model = create_model("resnet8", num_classes=10)
    prune_unstructured(model, 0.6, scope="global")
    s = sparsity(model)
    total = sum(m.weight.numel() for _, m in prunable_layers(model))
    assert abs(s["pruned_layers"] - 0.6) <= 1 / total
    assert max(s["layers"].values()) > 0.6 > min(s["layers"].values())  # global: layers differ


def test_make_permanent_leaves_plain_weights_with_the_zeros():
    model = create_model("simple_cnn", num_classes=10)
    prune_unstructured(model, 0.5)
    masked = model.state_dict()
    assert any(k.endswith("weight_mask") for k in masked)
    folded = fold_masks(masked)
    plain = make_permanent(model).state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in plain) and folded.keys() == plain.keys()
    assert all(torch.equal(folded[k], plain[k]) for k in plain)
    assert abs(sparsity(model)["pruned_layers"] - 0.5) < 1e-3


def test_batchnorm_recalibration_averages_the_given_batches_and_trains_nothing():
    model = create_model("resnet8", num_classes=10, drop_rate=0.5)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 3, 16, 16) * 3 + 1 for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 24
    x = torch.cat(batches)
    with torch.no_grad():
        want = model.conv1(model.pixel_norm(x)).mean((0, 2, 3))  # the stem BN sees conv1's output
    assert torch.allclose(model.bn1.running_mean, want, atol=1e-5) and model.bn1.momentum == 0.1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), "half"])
def test_amount_outside_0_1_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match=r"pruning amount .*(outside \[0, 1\)|not a number)") as e:
        check_amount(bad)
    assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="outside"):
        prune_structured(create_model("resnet8"), 1.0, torch.zeros(1, 3, 32, 32))


def test_config_refuses_a_bad_prune_section():
    with pytest.raises(ConfigError, match=r"prune.amount=1.2 is outside \[0, 1\)"):
        load_config(DIGITS, ["prune.source=somewhere", "prune.amount=1.2"])
    with pytest.raises(ConfigError, match="needs prune.source"):
        load_config(DIGITS, ["prune.amount=0.5"])
    with pytest.raises(ConfigError, match="adapt.mode must be full"):
        load_config(DIGITS, ["prune.source=somewhere", "adapt.mode=lora"])


# ---------------------------------------------------------------------------------------------
# Run folders: a hand-made "trained" run (seeded init, no training) is enough for shapes and reloads


def _make_run(path: Path, overrides=()) -> Path:
    cfg = load_config(DIGITS, list(overrides))
    torch.manual_seed(0)
    model = build_model(cfg, 10)
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    save_weights(path / "checkpoints" / "best.safetensors", model.state_dict(),
                 {"classes": CLASSES, "model": cfg.model.name})
    (path / "run.json").write_text(json.dumps({"classes": CLASSES, "status": "done"}))
    return path


@pytest.mark.parametrize("kind,model", [("structured", "resnet8"), ("structured", "mobilenetv2"),
                                        ("unstructured", "mobilenetv2")])
def test_a_pruned_run_reloads_without_its_source_and_gives_identical_logits(tmp_path, kind, model):
    src = _make_run(tmp_path / "src", [f"model.name={model}", "model.in_chans=1", "data.image_size=32"])
    run, (base, row) = prune(src, 0.5, kind, finetune_epochs=0, out=tmp_path / "pruned")
    # What prune built in memory, built again the same way (deterministic magnitude ranking).
    cfg = load_config(run / "config.yaml")
    expected = make_permanent(pruned_from_source(cfg, 10)).eval()
    (src / "config.yaml").rename(src / "moved.yaml")  # the source is gone: the run must stand alone
    _, model_, classes, _ = load_trained(run)
    x = torch.randn(4, 1, 32, 32)
    assert classes == CLASSES and torch.equal(model_(x), expected(x)) and model_(x).shape == (4, 10)
    assert not any(k.endswith(("_orig", "_mask")) for k in load_file(str(run / "checkpoints" / "best.safetensors")))
    if kind == "structured":
        assert row["params"] < 0.4 * base["params"] and row["size_bytes"] < 0.5 * base["size_bytes"]
        assert row["macs"] < 0.4 * base["macs"]
    else:
        assert row["params"] == base["params"] and row["zeros"] > 0.45
    assert (run / "PRUNED.md").is_file() and json.loads((run / "run.json").read_text())["prune"]["kind"] == kind


def test_pruning_a_pruned_run_prunes_further(tmp_path):
    src = _make_run(tmp_path / "src", ["model.name=resnet8", "model.in_chans=1"])
    once, rows1 = prune(src, 0.5, finetune_epochs=0, out=tmp_path / "once")
    twice, rows2 = prune(once, 0.5, finetune_epochs=0, out=tmp_path / "twice")
    assert rows2[1]["params"] < 0.4 * rows1[1]["params"]
    assert load_trained(twice)[1](torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_bad_runs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"pruning amount 1\.0 is outside \[0, 1\)"):
        prune(tmp_path / "does-not-matter", 1.0)
    with pytest.raises(CheckpointError, match="not a run folder"):
        prune(tmp_path / "nowhere", 0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_config(load_config(DIGITS), empty / "config.yaml")
    with pytest.raises(CheckpointError, match="has no weights"):
        prune(empty, 0.5)
    ssl = _make_run(tmp_path / "ssl", ["method=simclr"])
    with pytest.raises(ValueError, match="self-supervised"):
        prune(ssl, 0.5)
    assert not (tmp_path / "ssl-structured-50").exists()


def test_a_sweep_writes_table_plot_and_page(tmp_path):
    src = _make_run(tmp_path / "src", ["model.name=resnet8", "model.in_chans=1"])
    folder, rows = prune(src, sweep=[0.25, 0.5], finetune_epochs=0, out=tmp_path / "sweep")
    assert [r["amount"] for r in rows] == [0.0, 0.25, 0.5]
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all(r["img_per_s"] > 0 and r["speedup"] > 0 for r in rows)
    for f in ("sweep.json", "sweep.md", "sweep.png", "sweep.html"):
        assert (folder / f).is_file(), f
    assert "structured 50%" in (folder / "sweep.md").read_text()
    again, _ = prune(src, sweep=[0.25, 0.5], finetune_epochs=0, out=tmp_path / "sweep")  # reuses its points
    assert again == folder
    assert 'id="pruning"' in (Path(rows[1]["run"]) / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# Real training on digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The digits plain CNN, 3 epochs (~98% test accuracy)."""
    torch.set_num_threads(1)
    return vs.train(DIGITS, ["train.epochs=3", "train.threads=1"], out=tmp_path_factory.mktemp("d") / "digits")


@pytest.mark.parametrize("kind,amount", [("structured", 0.5), ("unstructured", 0.7)])
def test_prune_and_finetune_on_digits_keeps_accuracy(tmp_path, trained, kind, amount):
    src_acc = json.loads((trained / "eval.json").read_text())["acc"]
    run, (base, row) = prune(trained, amount, kind, finetune_epochs=1, out=tmp_path / "p",
                                overrides=["train.threads=1"])
    assert base["acc"] == pytest.approx(src_acc)
    assert row["acc"] >= src_acc - 0.05  # 359 test images: one is 0.28 points
    assert json.loads((run / "eval.json").read_text())["acc"] == pytest.approx(row["acc"])
    page = (run / "report.html").read_text()
    assert 'id="pruning"' in page and "before pruning" in page and "could not be drawn" not in page
    if kind == "unstructured":  # best: plain weights; last keeps the masks for resume
        assert not any(k.endswith("_mask") for k in load_file(str(run / "checkpoints" / "best.safetensors")))
        assert any(k.endswith("_mask") for k in load_file(str(run / "checkpoints" / "last.safetensors")))
        assert row["zeros"] > 0.6
        _, last, _, _ = load_trained(run, "last")
        assert sparsity(last)["pruned_layers"] == pytest.approx(0.7, abs=1e-3)
    else:  # half the channels gone: the fine-tune has clearly something to win back
        assert row["params"] < 0.35 * base["params"] and row["acc"] > row["acc_before_ft"] + 0.03


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_a_pruning_run_resumes_bit_exact(trained, resumes_exactly, kind):
    src_cfg = load_config(trained / "config.yaml")
    cfg = prune_config(src_cfg, trained, 0.5, kind, 2, "l2", "layer",
                       ["train.checkpoint_every=7", "train.threads=1"])
    resumes_exactly(cfg, stop_at=9)


def test_prune_from_the_command_line(cli, tmp_path, trained):
    res = cli("prune", trained, "--amount", "0.5", "--finetune-epochs", "0", "--out", tmp_path / "p")
    assert "structured 50%" in res.stdout and "pruned run:" in res.stdout
    res = cli("eval", tmp_path / "p")
    assert "accuracy" in res.stdout
    res = cli("prune", trained, "--amount", "1", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "outside [0, 1)" in res.stderr
