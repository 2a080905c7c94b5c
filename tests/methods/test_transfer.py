"""Transfer modes: which parameters train, frozen BatchNorm statistics, layer-wise learning rates."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

from visionsmith.config import AdaptConfig, load_config
from visionsmith.engine.build import build_model, build_optimizer
from visionsmith.methods import build_method
from visionsmith.surgery.transfer import adapt_model, classifier_prefix, lr_scales, param_blocks
from visionsmith.models import create_model

REPO = Path(__file__).resolve().parents[2]


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_blocks_follow_depth_and_leave_out_the_head():
    m = create_model("mobilenetv2", num_classes=10)
    blocks = param_blocks(m)
    assert blocks[0][0].startswith("features.0.") and blocks[-1][0].startswith("features.18.")
    assert len(blocks) == 19  # stem, 17 inverted residuals, last 1x1 conv
    assert not any(n.startswith("head.") for b in blocks for n in b)
    assert classifier_prefix(m) == "head.fc"
    # every non-head parameter is in exactly one block
    names = [n for b in blocks for n in b]
    assert len(names) == len(set(names)) == sum(1 for n, _ in m.named_parameters() if not n.startswith("head."))
    # blocks of a transformers ViT: embeddings first, then encoder layers
    vit = param_blocks(create_model("vit_tiny", num_classes=10))
    assert vit[0][0].startswith("backbone.embeddings") and any(re.search(r"\.layers?\.5\.", b[0]) for b in vit)


def test_linear_probe_trains_only_the_head_and_freezes_batchnorm_statistics():
    m = adapt_model(create_model("resnet8", num_classes=10), AdaptConfig(mode="linear"))
    assert _trainable(m) == {"head.fc.weight", "head.fc.bias"}
    bn = next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m.train()  # model.train() must not wake the frozen statistics up ...
    m(torch.randn(8, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn.running_mean, before)
    ema = copy.deepcopy(m).train()  # ... and neither must a deepcopy (the EMA) of it
    ema(torch.randn(8, 3, 32, 32) * 3 + 1)
    assert not any(b.training for b in ema.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_update_keeps_statistics_learning_in_bitfit():
    m = adapt_model(create_model("resnet8", num_classes=10), AdaptConfig(mode="bitfit"))
    assert all(n.endswith("bias") or n.startswith("head.") for n in _trainable(m))
    bn = next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    m.train()(torch.randn(8, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn.running_mean, before)


def test_partial_trains_the_last_blocks_and_says_how_many_exist():
    m = create_model("mobilenetv2", num_classes=10)
    blocks = param_blocks(m)
    adapt_model(m, AdaptConfig(mode="partial", blocks=2))
    assert _trainable(m) == set(blocks[-1]) | set(blocks[-2]) | {"head.fc.weight", "head.fc.bias"}
    with pytest.raises(ValueError, match="has only 19 blocks"):
        adapt_model(create_model("mobilenetv2", num_classes=10), AdaptConfig(mode="partial", blocks=40))


def test_layer_decay_scales_learning_rates_by_depth():
    m = create_model("resnet8", num_classes=10)
    scales = lr_scales(m, AdaptConfig(layer_decay=0.5))
    blocks = param_blocks(m)
    assert scales[blocks[-1][0]] == 0.5 and scales[blocks[0][0]] == 0.5 ** len(blocks)
    assert "head.fc.weight" not in scales  # the head trains at the base rate
    cfg = load_config(REPO / "recipes" / "digits.yaml", ["model.name=resnet8", "adapt.layer_decay=0.5"])
    opt = build_optimizer(cfg, build_method(cfg, build_model(cfg, 10)))
    assert sorted({g["lr_scale"] for g in opt.param_groups}) == sorted({*scales.values(), 1.0})


def test_head_lr_gives_the_new_head_its_own_rate_in_every_mode():
    cfg = load_config(REPO / "recipes" / "digits.yaml", ["model.name=resnet8", "adapt.mode=lora",
                                                         "adapt.lora.r=2", "adapt.head_lr=5"])
    method = build_method(cfg, build_model(cfg, 10))
    opt = build_optimizer(cfg, method)
    head = {id(p) for n, p in method.named_parameters() if ".head.fc." in f".{n}"}
    fast = {id(p) for g in opt.param_groups if g["lr_scale"] == 5 for p in g["params"]}
    assert head and fast == head  # the head (weight and bias groups), and only it, at 5x
    assert {g["lr_scale"] for g in opt.param_groups} == {1.0, 5.0}  # the adapters at the base rate
    with pytest.raises(Exception, match="head_lr"):
        load_config(REPO / "recipes" / "digits.yaml", ["adapt.head_lr=0"])


def test_frozen_parameters_do_not_move_in_training(tmp_path):
    import visionsmith as vs
    from safetensors.torch import load_file
    over = ["train.epochs=1", "train.threads=1", "adapt.mode=linear", "model.pretrained=false"]
    run = vs.train(REPO / "recipes" / "digits.yaml", over, out=tmp_path / "lin", report=False)
    torch.manual_seed(0)
    init = build_model(load_config(run / "config.yaml"), 10)  # the run's seeded start
    trained = load_file(str(run / "checkpoints" / "last.safetensors"))
    for k, v in init.state_dict().items():
        if not k.startswith("head.fc."):  # the MLP head's hidden layer is representation: frozen too
            assert torch.equal(v, trained[k]), f"{k} changed in a linear probe"
    assert not torch.equal(init.state_dict()["head.fc.weight"], trained["head.fc.weight"])
    from visionsmith.engine.runfolder import read_json
    info = read_json(run / "run.json")
    assert info["adapt"] == "linear" and info["params"]["trainable"] == 64 * 10 + 10
