"""Family-specific details the contract test does not see."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionsmith.models import create_model
from visionsmith.models.efficientnet_lite import SameConv2d


@pytest.mark.parametrize("size", [224, 225, 31, 32])
@pytest.mark.parametrize("k,stride", [(3, 2), (5, 2), (3, 1), (5, 1)])
def test_same_conv_matches_tensorflow_padding(size, k, stride):
    """TF 'SAME': out = ceil(in / stride); total pad max((out-1)*s + k - in, 0), extra pixel bottom/right."""
    conv = SameConv2d(2, 3, k, stride)
    x = torch.randn(1, 2, size, size)
    out = -(-size // stride)
    pad = max((out - 1) * stride + k - size, 0)
    ref = F.conv2d(F.pad(x, [pad // 2, pad - pad // 2] * 2), conv.weight, stride=stride)
    y = conv(x)
    assert y.shape[-1] == out
    torch.testing.assert_close(y, ref)


def test_efficientnet_lite0_feature_strides():
    model = create_model("efficientnet_lite0", num_classes=3).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
        small = create_model("efficientnet_lite0", num_classes=3, stem_stride=1).eval()
        assert small.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 4, 4)


@pytest.mark.parametrize("name,size,spatial,blocks", [("resnet8", 32, 8, 1), ("resnet20", 32, 8, 3),
                                                       ("resnet18", 224, 7, 2)])
def test_resnet_layouts(name, size, spatial, blocks):
    model = create_model(name, num_classes=3).eval()
    assert len(model.layer1) == blocks
    with torch.no_grad():
        f = model.forward_features(torch.randn(1, 3, size, size))
    assert f.shape == (1, model.num_features, spatial, spatial)


def test_resnet18_small_stem():
    model = create_model("resnet18", num_classes=3, stem="small").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="tiny")


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_simple_cnn_any_input_size(size):
    for name in ("simple_cnn", "simple_cnn_wide"):
        model = create_model(name, num_classes=10, in_chans=1).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_simple_cnn_reset_keeps_hidden_layer():
    model = create_model("simple_cnn", num_classes=10)
    hidden = model.head.hidden.weight.clone()
    model.reset_classifier(3)
    assert model.head.fc.out_features == 3 and torch.equal(model.head.hidden.weight, hidden)
