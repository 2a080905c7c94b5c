"""Multi-scale features of every backbone: ``feature_info`` + ``forward_intermediates`` (``models/_base.py``).

Checks per family: one map per ``feature_info`` level with its channels and ``H / reduction``
size, ``indices`` picks levels, the walk stops after the deepest requested level, the deepest CNN
level is ``forward_features``, the ViT levels are the model's own (normed) hidden states, and the
interface adds nothing to the state dict.  Small inputs and random init (one pretrained
MobileNetV2) keep the file fast on two CPU cores.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import types

import pytest
import torch
import torch.nn as nn

from visionsmith.models import create_model
from visionsmith.models._base import feature_info_from_plan, resolve_feature_indices
from visionsmith.models.cnn import SimpleCNN
from visionsmith.models.efficientnet_lite import EfficientNetLite
from visionsmith.models.mobilenetv2 import MobileNetV2
from visionsmith.models.resnet import ResNet

TINY_VIT = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 64}
CONVNEXT = {"model_type": "convnext", "hidden_sizes": [8, 16, 24, 40], "depths": [1, 1, 1, 1]}

# name, factory kwargs, input side, expected (num_chs, reduction) per level at in_chans=3
CASES = {
    "simple_cnn": ({}, 64, [(32, 2), (64, 4)]),
    "simple_cnn_wide": ({}, 64, [(64, 2), (128, 4), (256, 8)]),
    "mobilenetv2": ({}, 64, [(16, 2), (24, 4), (32, 8), (96, 16), (1280, 32)]),
    "mobilenetv2-stem1": ({"stem_stride": 1}, 32, [(16, 1), (24, 2), (32, 4), (96, 8), (1280, 16)]),
    "efficientnet_lite0": ({}, 64, [(16, 2), (24, 4), (40, 8), (112, 16), (1280, 32)]),
    "resnet8": ({}, 32, [(16, 1), (32, 2), (64, 4)]),
    "resnet20": ({}, 32, [(16, 1), (32, 2), (64, 4)]),
    "resnet18": ({}, 64, [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]),
    "vit_tiny": ({}, 32, [(192, 4)] * 4),
    "dinov2_small": ({}, 56, [(384, 14)] * 4),
    "hf_vision-vit": ({"config": TINY_VIT}, 32, [(32, 8)] * 3),
    "hf_vision-convnext": ({"config": CONVNEXT}, 64, [(8, 4), (16, 8), (24, 16), (40, 32)]),
}
VITS = ("vit_tiny", "dinov2_small", "hf_vision-vit")


def _build(case: str, in_chans: int, **kw):
    kwargs, _, _ = CASES[case]
    torch.manual_seed(0)
    return create_model(case.split("-")[0], num_classes=5, in_chans=in_chans, **kwargs, **kw).eval()


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_levels_match_feature_info(case, in_chans):
    model = _build(case, in_chans)
    _, size, expected = CASES[case]
    info = model.feature_info
    assert [(f["num_chs"], f["reduction"]) for f in info] == expected
    json.dumps(info)  # plain data
    for f in info:
        model.get_submodule(f["module"])  # a real module path (a hook target)
    keys = list(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())

    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        outs = model.forward_intermediates(x)
        feats = model.forward_features(x)
    assert len(outs) == len(info)
    for f, o in zip(info, outs):
        assert o.shape == (2, f["num_chs"], size // f["reduction"], size // f["reduction"])
    if feats.dim() == 4:  # CNN: the deepest level is forward_features' map
        torch.testing.assert_close(outs[-1], feats, rtol=1e-5, atol=1e-6)
    # nothing was added: same keys and parameter count as a freshly built model
    assert list(model.state_dict()) == keys == list(_build(case, in_chans).state_dict())
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("case", ["mobilenetv2", "resnet18", "efficientnet_lite0", "vit_tiny"])
def test_indices_select_levels_and_stop_early(case):
    model = _build(case, 3)
    _, size, _ = CASES[case]
    n = len(model.feature_info)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        full = model.forward_intermediates(x)
        for i in range(n):
            (one,) = model.forward_intermediates(x, [i])
            torch.testing.assert_close(one, full[i])
        torch.testing.assert_close(model.forward_intermediates(x, [-1])[0], full[-1])
        picked = model.forward_intermediates(x, [2, 0, -1, 2])  # sorted, unique, shallow to deep
        assert len(picked) == 3
        for o, i in zip(picked, [0, 2, n - 1]):
            torch.testing.assert_close(o, full[i])
        last2 = model.forward_intermediates(x, 2)  # an int: the deepest n levels (timm)
        assert [o.shape for o in last2] == [o.shape for o in full[-2:]]
        assert model.forward_intermediates(x, []) == []
        with pytest.raises(IndexError, match="levels"):
            model.forward_intermediates(x, [n])

        # the walk stops after the deepest requested level: the deeper modules never run
        calls = []
        deepest = model.get_submodule(model.feature_info[-1]["module"])
        handle = deepest.register_forward_hook(lambda *a: calls.append(1))
        try:
            model.forward_intermediates(x, [0])
            assert not calls
            model.forward_intermediates(x, [-1])
            assert calls
        finally:
            handle.remove()


@pytest.mark.parametrize("case", VITS)
def test_vit_levels_are_normed_hidden_states(case):
    model = _build(case, 3)
    _, size, _ = CASES[case]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        outs = model.forward_intermediates(x)
        ref = model.backbone(pixel_values=model.pixel_norm(x), output_hidden_states=True)
    g = size // model.feature_info[0]["reduction"]

    def as_map(tokens):  # [B, T, D] -> patch tokens [B, D, g, g]
        return tokens[:, -g * g:].transpose(1, 2).reshape(2, -1, g, g)

    torch.testing.assert_close(outs[-1], as_map(ref.last_hidden_state), rtol=1e-5, atol=1e-6)
    for f, o in zip(model.feature_info, outs):
        block = int(f["module"].rsplit(".", 1)[1])
        torch.testing.assert_close(o, as_map(model.backbone.layernorm(ref.hidden_states[block + 1])),
                                   rtol=1e-5, atol=1e-6)


def test_feature_steps_survive_peft_injection_and_deepcopy():
    peft = pytest.importorskip("peft")
    vit_targets = [r"backbone\.layers\.\d+\.attention\.q_proj", "backbone.layers.0.mlp.fc1"]
    for case, targets in (("resnet8", ["conv1", "layer2.0.conv1", "layer3.0.conv2"]), ("hf_vision-vit", vit_targets)):
        model = _build(case, 3)
        _, size, _ = CASES[case]
        info = copy.deepcopy(model.feature_info)
        names = [n for n, _ in model.named_modules()]
        targets = [n for n in names if any(re.fullmatch(t, n) for t in targets)]
        assert targets, case
        peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=targets), model)
        for mod in model.modules():  # non-zero adapters, so the walk visibly runs them
            if hasattr(mod, "lora_B"):
                for lin in mod.lora_B.values():
                    nn.init.normal_(lin.weight, std=0.1)
        assert model.feature_info == info
        for f in info:
            model.get_submodule(f["module"])
        model.eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            outs = model.forward_intermediates(x)
            if case in VITS:
                g = size // info[-1]["reduction"]
                last = model.backbone(pixel_values=model.pixel_norm(x)).last_hidden_state
                ref = last[:, -g * g:].transpose(1, 2).reshape(outs[-1].shape)
            else:
                ref = model.forward_features(x)
            torch.testing.assert_close(outs[-1], ref, rtol=1e-5, atol=1e-6)
            twin = copy.deepcopy(model)  # the steps are rebuilt from the copy's own modules
            for p in twin.parameters():
                p.data.mul_(0.5)
            assert not torch.allclose(twin.forward_intermediates(x)[-1], outs[-1])
            torch.testing.assert_close(model.forward_intermediates(x)[-1], outs[-1])


@pytest.mark.parametrize("make", [
    lambda c: MobileNetV2(10, width_mult=0.5, in_chans=c),
    lambda c: MobileNetV2(10, width_mult=1.4, in_chans=c, stem_stride=1),
    lambda c: EfficientNetLite(10, in_chans=c, stem_stride=1),
    lambda c: ResNet((1, 1), (8, 16), 10, in_chans=c, stem="small"),
    lambda c: ResNet((1, 2, 1), (8, 16, 24), 10, in_chans=c),
    lambda c: SimpleCNN(10, in_chans=c, widths=(8, 16, 24, 32)),
], ids=["mbv2-0.5", "mbv2-1.4-stem1", "lite0-stem1", "resnet-small-2stage", "resnet-3stage", "cnn-4blocks"])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_feature_info_follows_the_variant(make, in_chans):
    torch.manual_seed(0)
    model = make(in_chans).eval()
    x = torch.randn(1, in_chans, 64, 64)
    with torch.no_grad():
        outs = model.forward_intermediates(x)
        feats = model.forward_features(x)
    assert len(outs) == len(model.feature_info) > 1
    reductions = [f["reduction"] for f in model.feature_info]
    assert reductions == sorted(set(reductions))  # one level per stride, shallow to deep
    for f, o in zip(model.feature_info, outs):
        assert o.shape == (1, f["num_chs"], 64 // f["reduction"], 64 // f["reduction"])
    torch.testing.assert_close(outs[-1], feats, rtol=1e-5, atol=1e-6)


def test_pretrained_mobilenetv2_levels():
    model = create_model("mobilenetv2", pretrained=True, num_classes=1000).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        outs = model.forward_intermediates(x)
        torch.testing.assert_close(outs[-1], model.forward_features(x), rtol=1e-5, atol=1e-6)
    assert [o.shape[-1] for o in outs] == [48, 24, 12, 6, 3]
    assert all(torch.isfinite(o).all() for o in outs)


def test_transformers_model_without_maps_says_so():
    beit = {"model_type": "beit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64}
    model = create_model("hf_vision", config=beit, num_classes=3)
    assert model.feature_info == []
    with pytest.raises(NotImplementedError, match="token ViT"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32))


def test_resolve_indices_and_plan():
    assert resolve_feature_indices(None, 4) == [0, 1, 2, 3]
    assert resolve_feature_indices(2, 4) == [2, 3]
    assert resolve_feature_indices([-1, 0, 0], 4) == [0, 3]
    for bad in (0, 5, [4], [-5]):
        with pytest.raises(IndexError):
            resolve_feature_indices(bad, 4)
    with pytest.raises(TypeError):
        resolve_feature_indices(1.5, 4)
    plan = [("stem", 32, 2), ("b0", 16, 1), ("b1", 24, 2), ("b2", 24, 1), ("head", 64, 1)]
    assert feature_info_from_plan(plan) == [{"num_chs": 16, "reduction": 2, "module": "b0"},
                                            {"num_chs": 64, "reduction": 4, "module": "head"}]


def _timm_importable() -> bool:
    try:
        import timm  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - timm with a mismatched torchvision raises RuntimeError
        return False


class _FakeTimmNet(nn.Module):
    """The part of timm's API the bridge uses: ``feature_info`` + ``forward_intermediates``."""

    def __init__(self, in_chans=3, **_):
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(in_chans, 4, 3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1)])
        self.feature_info = [{"num_chs": 4, "reduction": 2, "module": "stages.0"},
                             {"num_chs": 8, "reduction": 4, "module": "stages.1"}]
        self.calls = []

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        self.calls.append({"stop_early": stop_early, "intermediates_only": intermediates_only})
        take = resolve_feature_indices(indices, 2)
        inter = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in take:
                inter.append(x)
        return inter if intermediates_only else (x, inter)


def test_timm_models_delegate_to_timm(monkeypatch):
    if _timm_importable():
        model = create_model("timm_model", model_name="resnet18", num_classes=3).eval()
        outs = model.forward_intermediates(torch.randn(1, 3, 64, 64))
        assert isinstance(outs, list) and len(outs) == len(model.feature_info)
        for f, o in zip(model.feature_info, outs):
            assert o.shape[1] == f["num_chs"] and o.shape[-1] == 64 // f["reduction"]
        return
    fake = types.ModuleType("timm")
    fake.create_model = lambda name, **kw: _FakeTimmNet(**kw)
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = create_model("timm_model", model_name="fake", num_classes=3)
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 16, 16)
    outs = model.forward_intermediates(x)
    assert [o.shape for o in outs] == [(1, 4, 8, 8), (1, 8, 4, 4)]
    assert model.calls[-1] == {"stop_early": True, "intermediates_only": True}
    assert len(model.forward_intermediates(x, [-1])) == 1
    assert list(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    twin.forward_intermediates(x)
    assert len(twin.calls) == len(model.calls) + 1  # bound to the copy, not the original
