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


def _old_statistics(values, in_chans: int) -> torch.Tensor:
    """What ``BatchTransform`` normalised with before normalisation moved into the model."""
    t = torch.tensor(tuple(values), dtype=torch.float32)
    if in_chans == 1 and t.numel() != 1:
        t = t.mean().reshape(1)
    return t.reshape(1, -1, 1, 1).expand(1, in_chans, 1, 1).contiguous()


@pytest.mark.parametrize("name,in_chans", _params())
def test_the_model_takes_pixels_and_normalises_them_itself(name, in_chans):
    """``forward`` on [0, 1] pixels is bit for bit the old path (the network on ``(x - mean) / std``,
    normalised outside with the ``pretrained_cfg`` statistics), and ``pixel_norm`` adds no state."""
    import copy

    from visionsmith.models._base import PixelNorm
    model = _build(name, in_chans).eval()
    norm = model.pixel_norm
    assert isinstance(norm, PixelNorm) and norm.in_chans == in_chans
    cfg = model.pretrained_cfg
    mean, std = _old_statistics(cfg["mean"], in_chans), _old_statistics(cfg["std"], in_chans)
    assert torch.equal(norm.mean, mean) and torch.equal(norm.std, std)
    # no parameters, no state_dict keys: checkpoints, LoRA targets and pruning see the network alone
    assert not list(norm.parameters()) and not any("pixel_norm" in k for k in model.state_dict())
    assert not any(n.startswith("pixel_norm") for n, _ in model.named_parameters())

    core = copy.deepcopy(model)  # the network without its normalisation
    core.pixel_norm = torch.nn.Identity()
    x = torch.rand(2, in_chans, 32, 32)  # pixels
    with torch.no_grad():
        assert torch.equal(model(x), core((x - mean) / std))
        assert torch.equal(model.forward_features(x), core.forward_features((x - mean) / std))
        if getattr(model, "feature_info", None):
            for a, b in zip(model.forward_intermediates(x), core.forward_intermediates((x - mean) / std)):
                assert torch.equal(a, b)


def test_pixel_norm_statistics_and_defaults():
    from visionsmith.models._base import IMAGENET_MEAN, IMAGENET_STD, PixelNorm
    x = torch.rand(2, 3, 4, 4)
    n = PixelNorm(IMAGENET_MEAN, IMAGENET_STD, 3)
    assert n.mean.shape == n.std.shape == (1, 3, 1, 1) and n.mean.dtype == torch.float32
    assert torch.equal(n(x), (x - n.mean) / n.std) and torch.allclose(n.inverse(n(x)), x, atol=1e-6)
    gray = PixelNorm(IMAGENET_MEAN, IMAGENET_STD, 1)  # one channel: the mean of the RGB statistics
    assert torch.equal(gray.mean, torch.tensor(IMAGENET_MEAN).mean().reshape(1, 1, 1, 1))
    neutral = PixelNorm.from_cfg({}, 3)  # no statistics recorded: (0.5, 0.5, 0.5), [0, 1] -> [-1, 1]
    assert torch.equal(neutral(torch.ones(1, 3, 1, 1)), torch.ones(1, 3, 1, 1))
    assert n.state_dict() == {} and PixelNorm.from_cfg(None, 1).mean.item() == 0.5


def test_create_model_refuses_a_factory_without_pixel_norm():
    from visionsmith.models import register_model
    from visionsmith.models.registry import _REGISTRY

    @register_model("_no_pixel_norm")
    def _no_pixel_norm(**_):
        return torch.nn.Linear(2, 2)
    try:
        with pytest.raises(TypeError, match="without a pixel_norm"):
            create_model("_no_pixel_norm")
    finally:
        _REGISTRY.pop("_no_pixel_norm")
