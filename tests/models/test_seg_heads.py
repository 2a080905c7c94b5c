"""Segmentation heads on feature pyramids (random and a real conv pyramid) and the SegFormer wrapper."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionsmith.models.heads import DeepLabV3PlusDecoder, FPNDecoder, build_seg_head
from visionsmith.models.weights import WeightLoadError

KINDS = ["fpn", "deeplabv3plus"]


def _feats(channels, strides, size=(64, 48), b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, -(-size[0] // s), -(-size[1] // s), generator=g) for c, s in zip(channels, strides)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels,strides", [
    ([16, 24, 32, 48], [4, 8, 16, 32]),  # a CNN pyramid
    ([8, 16, 24, 32, 48], [2, 4, 8, 16, 32]),  # with a stride-2 stem level below min_stride
    ([32, 32, 32, 32], [14, 14, 14, 14]),  # ViT intermediates, all at one stride
    ([40], [16]),  # one level
])
def test_output_shape_and_gradients(kind, channels, strides):
    head = build_seg_head(kind, channels, strides, num_classes=5, channels=32)
    feats = [f.requires_grad_(True) for f in _feats(channels, strides)]
    out = head(feats, out_size=(64, 48))
    assert out.shape == (2, 5, 64, 48)
    out.square().mean().backward()
    assert isinstance(head.classifier, nn.Conv2d) and head.classifier.out_channels == 5
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    used = [i for i, s in enumerate(strides) if s >= 4]
    if kind == "fpn":  # every level at >= min_stride reaches the logits, the stride-2 one does not
        assert [feats[i].grad is not None for i in range(len(feats))] == [i in used for i in range(len(feats))]


def test_fpn_skips_levels_finer_than_min_stride():
    head = FPNDecoder([8, 16, 24], [2, 4, 8], num_classes=3, channels=16, min_stride=4)
    assert head.levels == [1, 2] and len(head.lateral) == 2 and head.lateral[0].in_channels == 16
    assert FPNDecoder([8, 16], [2, 2], 3, channels=16).levels == [1]  # all finer: the deepest is decoded


def test_deeplab_rates_follow_the_deepest_stride_and_pick_the_stride_4_low_level():
    assert DeepLabV3PlusDecoder([8, 16, 32], [4, 8, 16], 3).atrous_rates == (6, 12, 18)  # the paper, OS 16
    assert DeepLabV3PlusDecoder([8, 16, 32], [4, 8, 32], 3).atrous_rates == (3, 6, 9)
    assert DeepLabV3PlusDecoder([8, 16, 32], [4, 8, 8], 3).atrous_rates == (12, 24, 36)
    assert DeepLabV3PlusDecoder([8], [14], 3).atrous_rates == (7, 14, 21)
    head = DeepLabV3PlusDecoder([8, 16, 24, 32], [2, 4, 8, 16], 3, atrous_rates=(1, 2))
    assert head.low_level == 1 and head.atrous_rates == (1, 2)


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_deeplab_trains_with_batch_one(norm):
    """BatchNorm after global pooling raises on batch 1 in train mode; the pooling branch has none."""
    head = build_seg_head("deeplabv3plus", [16, 32], [4, 16], 4, channels=16, norm=norm).train()
    head(_feats([16, 32], [4, 16], b=1), (32, 32)).sum().backward()


def test_odd_sizes_and_reset_classifier():
    channels, strides = [8, 16, 32], [4, 8, 16]
    for kind in KINDS:
        head = build_seg_head(kind, channels, strides, 3, channels=16)
        feats = _feats(channels, strides, size=(30, 33))  # ceil sizes 8x9, 4x5, 2x3
        assert head(feats, (30, 33)).shape == (2, 3, 30, 33)
        head.reset_classifier(7)
        assert head.get_classifier() is head.classifier and head(feats, (30, 33)).shape == (2, 7, 30, 33)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown segmentation head 'unet'"):
        build_seg_head("unet", [8], [4], 2)
    with pytest.raises(ValueError, match="'fpn'.*low_level_channels"):
        build_seg_head("fpn", [8], [4], 2, low_level_channels=4)
    with pytest.raises(ValueError, match="same length"):
        build_seg_head("fpn", [8, 16], [4], 2)
    with pytest.raises(ValueError, match="shallow to deep"):
        build_seg_head("deeplabv3plus", [8, 16], [8, 4], 2)
    head = build_seg_head("fpn", [8, 16], [4, 8], 2, channels=8)
    with pytest.raises(ValueError, match=r"C_i = \[8, 16\]"):
        head(_feats([8, 32], [4, 8]), (32, 32))


class _TinyPyramid(nn.Module):
    """Four stride-2 conv stages: [B, 3, H, W] -> maps at strides 2, 4, 8, 16 (the backbone interface)."""

    def __init__(self):
        super().__init__()
        chs = [3, 8, 16, 24, 32]
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.ReLU()) for a, b in zip(chs, chs[1:]))
        self.feature_info = [{"num_chs": c, "reduction": 2 ** (i + 1), "module": f"stages.{i}"}
                             for i, c in enumerate(chs[1:])]

    def forward_intermediates(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


@pytest.mark.parametrize("kind", KINDS)
def test_learns_a_mask_on_a_real_conv_pyramid(kind):
    """Backbone + head, end to end: 30 Adam steps fit 'which pixels are brighter than the median'
    on smooth blobs (chance 0.5; about 0.94-0.95 over seeds 0-2 for both heads)."""
    torch.manual_seed(0)
    backbone = _TinyPyramid()
    info = backbone.feature_info
    head = build_seg_head(kind, [f["num_chs"] for f in info], [f["reduction"] for f in info], 2, channels=16)
    x = F.interpolate(torch.rand(8, 3, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)  # blobs
    y = (x.mean(1) > x.mean(1).median()).long()  # [8, 32, 32], half the pixels each class
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(30):
        loss = F.cross_entropy(head(backbone.forward_intermediates(x), x.shape[-2:]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (head(backbone.forward_intermediates(x), x.shape[-2:]).argmax(1) == y).float().mean()
    assert acc > 0.85, acc


# ---------------------------------------------------------------------------------------------
# SegFormer (transformers)

transformers = pytest.importorskip("transformers")


def test_segformer_from_config_and_round_trip(tmp_path):
    from visionsmith.models.segformer import segformer
    torch.manual_seed(0)
    model = segformer(num_classes=5).eval()  # MiT-b0 sized, random
    assert model.model.config.hidden_sizes == [32, 64, 160, 256]
    assert model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406) and model.pretrained_cfg["input_size"][0] == 3
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x)
    assert logits.shape == (2, 5, 64, 48)
    assert [f.shape[1:] for f in feats] == [(32, 16, 12), (64, 8, 6), (160, 4, 3), (256, 2, 2)]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert isinstance(model.get_classifier(), nn.Conv2d)

    from visionsmith.models._base import set_pixel_norm
    model.pretrained_cfg["mean"] = (0.1, 0.2, 0.3)
    set_pixel_norm(model, 3)  # pixel_norm is built from pretrained_cfg: rebuild it after changing that
    with torch.no_grad():
        logits = model(x)
    model.save_pretrained(tmp_path)
    again = segformer(5, pretrained=str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    assert again.pretrained_cfg["mean"] == (0.1, 0.2, 0.3)
    assert torch.equal(again.pixel_norm.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))  # the model normalises with it

    # another class count: the classifier is new, the rest (encoder and MLP decoder) is loaded
    other = segformer(3, pretrained=tmp_path, in_chans=1).eval()
    assert other.num_classes == 3 and other.model.config.num_labels == 3
    assert other(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    sd, sd2 = model.state_dict(), other.state_dict()
    key = "model.decode_head.linear_fuse.weight"
    assert torch.equal(sd[key], sd2[key])
    q = "model.segformer.stages.1.blocks.0.attention.q_proj.weight"
    assert q in sd2 and torch.equal(sd[q], sd2[q])


def test_segformer_bad_sources(tmp_path):
    from visionsmith.models.segformer import segformer
    with pytest.raises(WeightLoadError, match="not a local file or folder"):
        segformer(3, pretrained=str(tmp_path / "missing"))
    with pytest.raises(WeightLoadError, match="no readable config.json"):
        segformer(3, pretrained=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(WeightLoadError, match="'vit' model, not a SegFormer"):
        segformer(3, pretrained=tmp_path)
    with pytest.raises(WeightLoadError, match="local folder"):
        segformer(3, pretrained=True)
    with pytest.raises(ValueError, match="unknown variant 'b9'"):
        segformer(3, variant="b9")
