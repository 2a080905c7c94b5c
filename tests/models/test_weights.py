"""Strict weight loading: every key and every shape, or an error that names what differs."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from visionsmith.assets import AssetError, resolve
from visionsmith.models import create_model
from visionsmith.models.weights import WeightLoadError, load_strict, read_state_dict

EMBEDDED = {  # model -> (asset, classifier key in the file)
    "mobilenetv2": ("mobilenetv2-imagenet", "classifier.1."),
    "efficientnet_lite0": ("efficientnet-lite0-imagenet", "_fc."),
}


def _asset(name: str):
    try:
        return resolve(name)
    except AssetError as e:
        pytest.skip(f"asset not available: {e}")


def _save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_weights_load_every_key(name):
    asset, fc = EMBEDDED[name]
    file_sd = read_state_dict(_asset(asset))
    model = create_model(name, pretrained=True)
    own = model.state_dict()
    renamed = {k.replace(fc, "head.fc."): v for k, v in file_sd.items()}
    assert set(renamed) == set(own)  # nothing left out, nothing invented
    for k, v in renamed.items():
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_weights_new_class_count_and_gray(name):
    asset, _ = EMBEDDED[name]
    _asset(asset)
    model = create_model(name, pretrained=True, num_classes=5, in_chans=1)
    assert model.num_classes == 5 and model.head.fc.out_features == 5
    ref = create_model(name, pretrained=True)
    stem = "_conv_stem.weight" if name == "efficientnet_lite0" else "features.0.0.weight"
    # gray stem = sum of the RGB filters, so a gray image gives the RGB model's response to (g, g, g)
    torch.testing.assert_close(model.state_dict()[stem], ref.state_dict()[stem].sum(1, keepdim=True))


def test_other_architecture_is_named_efficientnet(tmp_path):
    path = _save(create_model("resnet20").state_dict(), tmp_path / "resnet20.safetensors")
    with pytest.raises(WeightLoadError) as e:
        create_model("efficientnet_lite0", pretrained=path)
    msg = str(e.value)
    assert "EfficientNetLite" in msg
    assert "294 missing (e.g. _blocks.0." in msg  # every key but the head's
    assert "unexpected (e.g. bn1." in msg  # resnet20's stem BN


def test_other_architecture_is_named_mobilenetv2_strict_loader():
    model = create_model("mobilenetv2")
    with pytest.raises(WeightLoadError, match=r"missing \(e\.g\. features\..*unexpected \(e\.g\. bn1\."):
        load_strict(model, create_model("resnet20").state_dict())


def test_other_architecture_is_named_mobilenetv2_factory(tmp_path):
    path = _save(create_model("resnet20").state_dict(), tmp_path / "resnet20.safetensors")
    with pytest.raises(WeightLoadError, match="missing"):
        create_model("mobilenetv2", pretrained=path)


@pytest.mark.parametrize("name", ["mobilenetv2", "efficientnet_lite0"])
def test_wrong_class_count_names_the_shape(name, tmp_path):
    # pretrained=<path> means the ImageNet layout (1000 classes); a 10-class file must not half-load
    path = _save(create_model(name, num_classes=10).state_dict(), tmp_path / "w10.safetensors")
    expected = r"shape mismatch.*head\.fc\.weight: file \(10, 1280\) vs model \(1000, 1280\)"
    with pytest.raises(WeightLoadError, match=expected):
        create_model(name, pretrained=path)


def test_small_model_checkpoint_round_trip_and_class_count(tmp_path):
    src = create_model("resnet20", num_classes=10).eval()
    path = _save(src.state_dict(), tmp_path / "r20.safetensors")
    dst = create_model("resnet20", num_classes=10, pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(WeightLoadError, match=r"head\.fc\.weight: file \(10, 64\) vs model \(7, 64\)"):
        create_model("resnet20", num_classes=7, pretrained=path)


def test_resnet18_loads_a_torchvision_state_dict(tmp_path):
    # A torchvision resnet18 state dict: our keys with the classifier called ``fc``.
    src = create_model("resnet18").eval()
    tv = {(k[len("head."):] if k.startswith("head.fc.") else k): v for k, v in src.state_dict().items()}
    assert "fc.weight" in tv and "layer4.1.bn2.running_var" in tv and "conv1.weight" in tv
    path = str(tmp_path / "resnet18-tv.pth")
    torch.save(tv, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(create_model("resnet18", pretrained=path).eval()(x), src(x))
        feats = create_model("resnet18", pretrained=path, num_classes=3).eval().forward_features(x)
        torch.testing.assert_close(feats, src.forward_features(x))
        gray = create_model("resnet18", pretrained=path, in_chans=1).eval()
        # the summed stem on one channel == the RGB stem on it repeated, for the same network input (the
        # models' own normalisations differ: a gray model uses the mean of the RGB statistics)
        gray.pixel_norm, src.pixel_norm = torch.nn.Identity(), torch.nn.Identity()
        torch.testing.assert_close(gray(x[:, :1]), src(x[:, :1].expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18", "simple_cnn", "vit_tiny", "hf_vision"])
def test_no_embedded_weights_is_a_clear_error(name):
    with pytest.raises(WeightLoadError, match="pretrained"):
        create_model(name, pretrained=True)


def test_missing_weight_file(tmp_path):
    with pytest.raises(WeightLoadError, match="does not exist"):
        create_model("resnet20", pretrained=str(tmp_path / "nope.pth"))
