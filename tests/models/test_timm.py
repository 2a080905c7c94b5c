"""The optional timm bridge: a clear ImportError without timm, the backbone contract with it."""
from __future__ import annotations

import pytest
import torch

from visionsmith.models import create_model


def _timm_importable() -> bool:
    try:
        import timm  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - timm with a mismatched torchvision raises RuntimeError
        return False


@pytest.mark.skipif(_timm_importable(), reason="timm is installed")
def test_missing_timm_says_how_to_install():
    with pytest.raises(ImportError, match=r"visionsmith\[timm\].*torchvision"):
        create_model("timm_model", model_name="resnet18", num_classes=3)


def test_timm_model_contract():
    pytest.importorskip("timm")
    model = create_model("timm_model", model_name="resnet18", num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model(x), model.forward_head(feats))
    assert {"mean", "std", "input_size"} <= set(model.pretrained_cfg)
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
