"""transformers backbones: local save_pretrained folders and configs only, never a hub."""
from __future__ import annotations

import json

import pytest
import torch

from visionsmith.models import create_model
from visionsmith.models.weights import WeightLoadError

transformers = pytest.importorskip("transformers")

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)


def _vit_config(**kw):
    return transformers.AutoConfig.for_model("vit", **{**TINY_VIT, **kw})


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    vit = transformers.ViTModel(_vit_config()).eval()  # with its tanh pooler
    vit.save_pretrained(tmp_path)
    model = create_model("hf_vision", pretrained=str(tmp_path), num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # our model takes [0, 1] pixels and normalises them itself (neutral 0.5/0.5: no preprocessor file)
        torch.testing.assert_close(model.forward_features(x), vit(pixel_values=(x - 0.5) / 0.5).pooler_output)
        assert model(x).shape == (2, 7)
    assert model.num_features == 32 and model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_classification_checkpoint_uses_cls_token_not_a_random_pooler(tmp_path):
    torch.manual_seed(0)
    clf = transformers.ViTForImageClassification(_vit_config(num_labels=5)).eval()
    clf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.4, 0.5, 0.6]}))
    model = create_model("hf_vision", pretrained=str(tmp_path), num_classes=5).eval()
    assert model.backbone.pooler is None  # the checkpoint has none: dropped, not randomly initialised
    assert model.pretrained_cfg["mean"] == (0.1, 0.2, 0.3) and model.pretrained_cfg["std"] == (0.4, 0.5, 0.6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = clf.classifier(model.forward_features(x))  # the original head on our features
        mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
        torch.testing.assert_close(logits, clf(pixel_values=(x - mean) / std).logits)  # the folder's mean/std


def test_gray_input_from_rgb_checkpoint(tmp_path):
    torch.manual_seed(0)
    vit = transformers.ViTModel(_vit_config()).eval()
    vit.save_pretrained(tmp_path)
    model = create_model("hf_vision", pretrained=str(tmp_path), in_chans=1).eval()
    assert model.backbone.config.num_channels == 1 and model.pretrained_cfg["input_size"][0] == 1
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = vit(pixel_values=((g - 0.5) / 0.5).expand(-1, 3, -1, -1)).pooler_output  # neutral mean/std
        torch.testing.assert_close(model.forward_features(g), ref, rtol=1e-4, atol=1e-4)


def test_missing_weights_are_an_error(tmp_path):
    transformers.ViTModel(_vit_config()).save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match=r"missing \(e\.g\. .*layers\.2\."):
        create_model("hf_vision", pretrained=str(tmp_path), config={"num_hidden_layers": 3})


def test_config_overrides_on_pretrained(tmp_path):
    transformers.ViTModel(_vit_config()).save_pretrained(tmp_path)
    model = create_model("hf_vision", pretrained=str(tmp_path), config={"hidden_dropout_prob": 0.1})
    assert model.backbone.config.hidden_dropout_prob == 0.1


@pytest.mark.parametrize("as_file", [False, True])
def test_config_from_local_folder_or_json(tmp_path, as_file):
    _vit_config().save_pretrained(tmp_path)
    src = tmp_path / "config.json" if as_file else tmp_path
    model = create_model("hf_vision", config=str(src), num_classes=3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_no_hub_ids():
    # a string that is not a local path would be a hub repo id to transformers: refused before any lookup
    with pytest.raises(WeightLoadError, match="never downloads"):
        create_model("hf_vision", pretrained="some-org/some-vision-model")
    with pytest.raises(WeightLoadError, match="never downloads"):
        create_model("hf_vision", config="some-org/some-vision-model")


def test_needs_a_source():
    with pytest.raises(ValueError, match="needs pretrained"):
        create_model("hf_vision")
    with pytest.raises(ValueError, match="model_type"):
        create_model("hf_vision", config={"hidden_size": 8})


@pytest.mark.parametrize("config,width", [
    ({"model_type": "convnext", "hidden_sizes": [8, 16, 24, 40], "depths": [1, 1, 1, 1]}, 40),
    ({"model_type": "resnet", "hidden_sizes": [8, 16, 24, 40], "depths": [1, 1, 1, 1], "embedding_size": 8}, 40),
    ({"model_type": "vit", **TINY_VIT}, 32),
])
def test_conv_and_transformer_configs(config, width):
    model = create_model("hf_vision", config=config, num_classes=4, in_chans=1).eval()
    assert model.num_features == width
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, width)


def test_pool_modes():
    x = torch.randn(2, 3, 32, 32)
    cfg = {"model_type": "vit", **TINY_VIT}
    torch.manual_seed(0)
    cls = create_model("hf_vision", config=cfg, pool="cls").eval()
    torch.manual_seed(0)
    mean = create_model("hf_vision", config=cfg, pool="mean").eval()
    with torch.no_grad():
        h = cls.backbone(pixel_values=cls.pixel_norm(x)).last_hidden_state  # the model normalises its pixels
        torch.testing.assert_close(cls.forward_features(x), h[:, 0])
        torch.testing.assert_close(mean.forward_features(x), h.mean(1))
    with pytest.raises(ValueError, match="pool"):
        create_model("hf_vision", config=cfg, pool="max")


def test_vit_tiny_round_trip(tmp_path):
    src = create_model("vit_tiny", num_classes=10).eval()
    assert src.backbone.pooler is None and src.num_features == 192
    src.backbone.save_pretrained(tmp_path)
    dst = create_model("vit_tiny", num_classes=10, pretrained=str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))
