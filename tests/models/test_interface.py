"""Every registered model honours the backbone contract of ``visionsmith/models/_base.py``.

Parametrized over ``list_models()``, so a new family is checked as soon as it is registered; a
model whose optional ``needs`` (e.g. timm) cannot be imported is skipped.  Inputs are 32x32 so the
whole file stays fast on two CPU cores.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from visionsmith.models import create_model, list_models
from visionsmith.models.weights import load_strict

# Factories that cannot be built from defaults alone get the smallest arguments that exercise them.
EXTRA_KWARGS = {
    "hf_vision": {"config": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}},
    "timm_model": {"model_name": "resnet18"},
}


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001 - timm with a mismatched torchvision raises RuntimeError
        return False


def _params():
    out = []
    for entry in list_models():
        missing = [m for m in entry.needs if not _importable(m)]
        marks = [pytest.mark.skip(reason=f"needs {', '.join(missing)}")] if missing else []
        for c in (1, 3):
            out.append(pytest.param(entry.name, c, marks=marks, id=f"{entry.name}-in{c}"))
    return out


def _build(name: str, in_chans: int, num_classes: int = 7):
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **EXTRA_KWARGS.get(name, {}))


@pytest.mark.parametrize("name,in_chans", _params())
def test_backbone_contract(name, in_chans, tmp_path):
    model = _build(name, in_chans)
    x = torch.randn(2, in_chans, 32, 32)

    assert isinstance(model.num_features, int) and model.num_classes == 7
    cfg = model.pretrained_cfg
    assert {"mean", "std", "input_size"} <= set(cfg)
    assert len(cfg["mean"]) == len(cfg["std"]) and all(s > 0 for s in cfg["std"])

    model.eval()
    with torch.no_grad():
        y = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        y2 = model.forward_head(feats)
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    # [B, num_features, h, w] for CNNs, [B, num_features] for self-pooling backbones
    assert feats.dim() in (2, 4) and feats.shape[:2] == (2, model.num_features)
    assert pre.shape == (2, model.num_features)
    torch.testing.assert_close(y2, y)

    # backward reaches every trainable parameter
    model.train()
    model.zero_grad()
    model(x).logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    # weights round-trip through safetensors into a fresh model, strictly
    model.eval()  # the train step moved BatchNorm running stats: take a new reference
    with torch.no_grad():
        y, feats = model(x), model.forward_features(x)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = _build(name, in_chans)
    torch.manual_seed(1)
    for p in fresh.parameters():  # make sure the load, not the seed, makes them equal
        torch.nn.init.normal_(p)
    load_strict(fresh, load_file(str(path)))
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y)

    # a new head for a new class count; the features are untouched
    model.reset_classifier(4)
    assert model.num_classes == 4
    with torch.no_grad():
        assert model(x).shape == (2, 4)
        torch.testing.assert_close(model.forward_features(x), feats)
    model.reset_classifier(0)  # features-only
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
