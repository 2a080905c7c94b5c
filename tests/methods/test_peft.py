"""Parameter-efficient fine-tuning: targets, adapters from peft, visual prompts, save/reload/merge parity."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import visionsmith as vs
from visionsmith.config import AdaptConfig, ConfigError, LoraConfig, load_config
from visionsmith.data import build_datasets
from visionsmith.engine.adapters import load_adapter, merge_run
from visionsmith.engine.build import build_transforms, load_trained
from visionsmith.engine.loop import fit
from visionsmith.surgery.peft import merge_adapters, resolve_targets
from visionsmith.surgery.transfer import adapt_model
from visionsmith.models import create_model

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_default_targets_skip_depthwise_convolutions_and_the_head():
    m = create_model("mobilenetv2", num_classes=10)
    names = resolve_targets(m, None, [])
    mods = dict(m.named_modules())
    assert "features.0.0" in names and "features.18.0" in names
    assert all(mods[n].groups == 1 for n in names if isinstance(mods[n], torch.nn.Conv2d))
    assert "features.1.conv.0.0" not in names  # the first block's 3x3 depthwise conv
    assert not any(n.startswith("head") for n in names)
    assert resolve_targets(m, [r"features\.1[5-8]\..*"], [r".*\.0\.0"]) == \
        [n for n in names if n.startswith(("features.15.", "features.16.", "features.17.", "features.18."))
         and not n.endswith(".0.0")]


def test_a_target_that_matches_nothing_names_the_modules_that_exist():
    m = create_model("resnet8", num_classes=10)
    with pytest.raises(ValueError, match=r"'blocks' matches no Linear/Conv2d module of ResNet; its module names "
                                         r"are: conv1, layer1\.0\.conv1, "):
        resolve_targets(m, ["blocks"], [])


def test_rank_and_alpha_patterns_give_per_module_ranks_and_scales(tmp_path):
    (tmp_path / "r.yaml").write_text(DIGITS.read_text())
    cfg = load_config(tmp_path / "r.yaml", ["adapt.mode=lora", "adapt.lora.r=1", "adapt.lora.alpha=2",
                                            r"adapt.lora.rank_pattern={'layer1\..*': 4}",
                                            r"adapt.lora.alpha_pattern={'layer1\..*': 8}"])
    m = adapt_model(create_model("resnet8", num_classes=10, in_chans=1), cfg.adapt)
    ranks = {n: (mod.r["default"], mod.scaling["default"]) for n, mod in m.named_modules() if hasattr(mod, "lora_A")}
    assert ranks["layer1.0.conv1"] == (4, 2.0) and ranks["layer2.0.conv1"] == (1, 2.0)
    assert m.layer1[0].conv1.lora_A["default"].weight.shape[0] == 4
    with pytest.raises(ConfigError, match="rank_pattern: every rank must be an integer >= 1"):
        load_config(tmp_path / "r.yaml", ["adapt.mode=lora", "adapt.lora.rank_pattern={'x': 0}"])


def test_lora_starts_as_the_pretrained_model_and_trains_under_two_percent():
    base = create_model("mobilenetv2", num_classes=10, pretrained=True).eval()
    torch.manual_seed(0)
    m = create_model("mobilenetv2", num_classes=10, pretrained=True)
    m.head.load_state_dict(base.head.state_dict())
    cfg = AdaptConfig(mode="lora", lora=LoraConfig(r=4, targets=[r"features\.1[6-8]\..*"]))
    adapt_model(m, cfg).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(base(x), m(x))  # LoRA's B starts at zero: the adapted model is the pretrained one
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert trainable / sum(p.numel() for p in m.parameters()) < 0.02
    assert {"head.fc.weight", "head.fc.bias"} <= _trainable(m)
    assert all("lora_" in n or n.startswith("head.fc") for n in _trainable(m))


def test_lora_with_biases_and_norm_layers_trains_exactly_those():
    m = create_model("mobilenetv2", num_classes=10)
    bn = {f"{n}.{p}" for n, mod in m.named_modules() if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    lora = AdaptConfig(mode="lora", lora=LoraConfig(r=1, bias="all"))
    t = _trainable(adapt_model(create_model("mobilenetv2", num_classes=10), lora))
    assert {n for n in bn if n.endswith(".bias")} <= {n.replace(".base_layer", "") for n in t}  # LoRA + BitFit
    assert not any(n.endswith(".weight") and n in bn for n in t)  # BN scales stay frozen
    t = _trainable(adapt_model(create_model("mobilenetv2", num_classes=10),
                               AdaptConfig(mode="lora", lora=LoraConfig(r=1, norm=True))))
    assert bn <= t and all("lora_" in n or n in bn or n.startswith("head.fc") for n in t)
    # train_full: the stem (not an adapter target here) and an adapted layer's own weight train in full
    full = AdaptConfig(mode="lora", lora=LoraConfig(r=1, targets=[r"features\.1[0-8]\..*"],
                                                     train_full=[r"features\.0\.0", r"features\.18\.0"]))
    t = _trainable(adapt_model(create_model("mobilenetv2", num_classes=10), full))
    assert {"features.0.0.weight", "features.18.0.base_layer.weight"} <= t
    with pytest.raises(ValueError, match="train_full: 'stem' matches no module"):
        adapt_model(create_model("mobilenetv2", num_classes=10),
                     AdaptConfig(mode="lora", lora=LoraConfig(r=1, train_full=["stem"])))


def test_lora_plus_gives_the_b_factors_a_higher_learning_rate(tmp_path):
    from visionsmith.engine.build import build_optimizer
    cfg = load_config(DIGITS, ["adapt.mode=lora", "adapt.lora.r=2", "adapt.lora.lr_ratio_b=16", "model.name=resnet8"])
    m = adapt_model(create_model("resnet8", num_classes=10), cfg.adapt)
    scale = {id(p): g["lr_scale"] for g in build_optimizer(cfg, m).param_groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert {scale[id(p)] for n, p in named.items() if ".lora_B." in n} == {16.0}
    assert {scale[id(p)] for n, p in named.items() if p.requires_grad and ".lora_B." not in n} == {1.0}
    with pytest.raises(ConfigError, match="lr_ratio_b must be > 0"):
        load_config(DIGITS, ["adapt.mode=lora", "adapt.lora.lr_ratio_b=0"])
    with pytest.raises(ConfigError, match="dora=true needs train.channels_last=false"):
        load_config(DIGITS, ["adapt.mode=lora", "adapt.lora.dora=true", "train.channels_last=true"])
    with pytest.raises(ConfigError, match="need adapt.mode=lora"):
        load_config(DIGITS, ["adapt.mode=loha", "adapt.lora.bias=all"])


def test_trained_biases_norms_and_full_layers_reload_and_merge_with_the_adapter(tmp_path):
    over = ["train.epochs=1", "train.max_steps=6", "train.threads=1", "adapt.mode=lora", "adapt.lora.r=2",
            "adapt.lora.bias=all", "adapt.lora.norm=true",
            "adapt.lora.train_full=['conv1']", "model.name=resnet8", "model.in_chans=3",
            "data.image_size=32", "model.pretrained=false"]
    run = vs.train(DIGITS, over, out=tmp_path / "lora")
    cfg, trained, _, _ = load_trained(run)
    ref = _logits(trained, cfg)
    _, reloaded, _ = load_adapter(run / "adapter" / "adapter.safetensors")
    assert (_logits(reloaded, cfg) - ref).abs().max() <= 1e-5
    merged_dir, diff = merge_run(run, tmp_path / "merged")
    mcfg, merged, _, _ = load_trained(merged_dir)
    assert diff <= 1e-5 and (_logits(merged, mcfg) - ref).abs().max() <= 1e-5
    # resnet8 from scratch starts its BatchNorm at scale 1, shift 0: training moved both
    norms = [mod for mod in merged.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert all((mod.weight != 1).any() and (mod.bias != 0).any() for mod in norms)


@pytest.mark.parametrize("mode,dora", [("lora", False), ("lora", True), ("loha", False), ("lokr", False), ("ia3", False)])
def test_every_peft_adapter_merges_to_the_same_function(mode, dora):
    torch.manual_seed(0)
    m = adapt_model(create_model("resnet8", num_classes=10),
                    AdaptConfig(mode=mode, lora=LoraConfig(r=4, dora=dora))).eval()
    assert dora == any("lora_magnitude_vector" in n for n in _trainable(m))  # DoRA's per-output magnitudes
    with torch.no_grad():  # a trained adapter is not the identity: move every adapter weight
        for n, p in m.named_parameters():
            if p.requires_grad and not n.startswith("head"):
                p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = m(x)
        merged = merge_adapters(m)
        after = merged(x)
    plain = create_model("resnet8", num_classes=10)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    assert (before - after).abs().max() < 1e-4


def test_visual_prompts_on_a_vit_and_a_clear_error_elsewhere():
    torch.manual_seed(0)
    m = adapt_model(create_model("vit_tiny", num_classes=10), AdaptConfig(mode="prompt", prompt_tokens=5))
    assert _trainable(m) == {"prompt.tokens", "head.fc.weight", "head.fc.bias"}
    seen = {}
    m.backbone.layers[0].register_forward_hook(lambda mod, i, o: seen.update(shape=(o[0] if isinstance(o, tuple) else o).shape))
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and seen["shape"][1] == 1 + 5 + 64  # CLS + prompts + 8x8 patches
    out.sum().backward()
    assert m.prompt.tokens.grad is not None and m.prompt.tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_adapters(m)
    with pytest.raises(ValueError, match="needs a ViT-style transformers model"):
        adapt_model(create_model("resnet8", num_classes=10), AdaptConfig(mode="prompt"))


def _logits(model, cfg, n=64):
    ds = build_datasets(cfg.data, cfg.seed)["test"]
    _, tf = build_transforms(cfg, model)
    with torch.no_grad():
        return model.eval()(tf(ds.images[:n], None))


# embedded pretrained bases (EfficientNet-Lite0's strided convs pad TF-"SAME" in forward: LoRA's factor must
# pad the same way) and a from-scratch base
@pytest.mark.parametrize("model", ["mobilenetv2", "efficientnet_lite0", "resnet8"])
def test_adapter_save_reload_and_merge_reproduce_outputs(tmp_path, model):
    over = ["train.epochs=1", "train.max_steps=6", "train.threads=1", "adapt.mode=lora", "adapt.lora.r=4",
            f"model.name={model}", "model.in_chans=3", "data.image_size=32",
            f"model.pretrained={'false' if model == 'resnet8' else 'true'}"]
    run = vs.train(DIGITS, over, out=tmp_path / "lora")
    adapter = run / "adapter" / "adapter.safetensors"
    assert adapter.is_file() and adapter.stat().st_size < (run / "checkpoints" / "best.safetensors").stat().st_size / 4
    cfg, trained, classes, _ = load_trained(run)
    ref = _logits(trained, cfg)
    _, reloaded, classes2 = load_adapter(adapter)
    assert classes2 == classes
    assert (_logits(reloaded, cfg) - ref).abs().max() <= 1e-5
    merged_dir, diff = merge_run(run, tmp_path / "merged")
    assert diff <= 1e-5
    mcfg, merged, _, _ = load_trained(merged_dir)
    assert mcfg.adapt.mode == "full" and not any("lora" in k for k in merged.state_dict())
    assert (_logits(merged, mcfg) - ref).abs().max() <= 1e-5
    ev = vs.evaluate(merged_dir)  # a merged folder is an ordinary run folder
    assert abs(ev["acc"] - json.loads((run / "eval.json").read_text())["acc"]) < 1e-9


def test_lora_run_resumes_bit_exact(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(DIGITS, ["train.epochs=2", "train.checkpoint_every=7", "train.threads=1", "adapt.mode=lora",
                               "model.name=resnet8", "model.in_chans=1", "adapt.lora.dropout=0.1"])
    full = fit(cfg, out=tmp_path / "full")
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=9)
    fit(cfg, resume=part)
    from safetensors.torch import load_file
    a, b = (load_file(str(r / "checkpoints" / "last.safetensors")) for r in (full, part))
    assert a.keys() == b.keys() and any("lora_A" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~15-30 s; DDP itself is covered by tests/engine/test_ddp.py in the default run
def test_lora_under_ddp(tmp_path, torchrun_available):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([torchrun_available, "--standalone", "--nproc_per_node", "2", "-m", "visionsmith", "train",
                          str(DIGITS), "train.epochs=1", "train.threads=1", "adapt.mode=lora", "model.name=resnet8",
                          "model.in_chans=1", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=e, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["env"]["world_size"] == 2 and info["adapt"] == "lora" and info["status"] == "done"
    assert (tmp_path / "ddp" / "adapter" / "adapter.safetensors").is_file()
