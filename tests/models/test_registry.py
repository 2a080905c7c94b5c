"""The model registry: names, suggestions for typos, and the factory signature every model shares."""
from __future__ import annotations

import inspect

import pytest

from visionsmith.models import create_model, get_model_entry, list_models

EXPECTED = {"simple_cnn", "simple_cnn_wide", "resnet8", "resnet20", "resnet18", "mobilenetv2",
            "efficientnet_lite0", "hf_vision", "vit_tiny", "dinov2_small", "timm_model"}


def test_all_families_registered():
    names = [e.name for e in list_models()]
    assert names == sorted(names)
    assert EXPECTED <= set(names)
    assert get_model_entry("efficientnet_lite0").pretrained == ("efficientnet-lite0-imagenet",)
    assert get_model_entry("dinov2_small").pretrained == ("dinov2-small-imgfocus",)
    assert get_model_entry("timm_model").needs == ("timm",)


@pytest.mark.parametrize("typo,suggested", [("mobilenet_v2", "mobilenetv2"), ("resnet2", "resnet20"),
                                            ("efficientnet_lite", "efficientnet_lite0"), ("simple-cnn", "simple_cnn")])
def test_unknown_name_suggests_close_matches(typo, suggested):
    with pytest.raises(KeyError) as e:
        create_model(typo)
    assert "Did you mean" in str(e.value) and suggested in str(e.value)


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.name)
def test_factory_signature(entry):
    params = inspect.signature(entry.fn).parameters
    for arg in ("num_classes", "pretrained", "in_chans", "drop_rate"):
        assert arg in params, f"{entry.name} lacks {arg}"
    assert params["pretrained"].default is False
    assert entry.description, f"{entry.name} has no one-line description (first docstring line)"
