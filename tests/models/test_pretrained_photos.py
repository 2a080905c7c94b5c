"""Pretrained ImageNet weights recognise real photographs (scikit-image's ``chelsea`` cat and
``coffee`` cup), each model given [0, 1] pixels that it normalises itself with the mean/std of its
own ``pretrained_cfg`` (``model.pixel_norm``).

This checks the whole chain end to end: key layout, padding, BN epsilon, RGB order and the
normalisation recorded for the weights.  ImageNet-1k indices: 281-285 domestic cats (tabby,
tiger cat, Persian, Siamese, Egyptian cat); 504 coffee mug, 967 espresso, 968 cup.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visionsmith.assets import AssetError
from visionsmith.models import create_model

skdata = pytest.importorskip("skimage.data")

CATS = set(range(281, 286))
CUPS = {504, 967, 968}


def preprocess(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, size, size] pixels in [0, 1]: shorter side to ``size`` (antialiased), centre
    crop.  No normalisation: the model does it."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    h, w = x.shape[-2:]
    s = size / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


@pytest.fixture(scope="module", params=["mobilenetv2", "efficientnet_lite0"])
def pretrained_model(request):
    try:
        return create_model(request.param, pretrained=True).eval()
    except AssetError as e:
        pytest.skip(f"asset not available: {e}")


@pytest.mark.parametrize("photo,classes", [("chelsea", CATS), ("coffee", CUPS)])
def test_pretrained_recognises_photo(pretrained_model, photo, classes):
    x = preprocess(getattr(skdata, photo)())
    with torch.no_grad():
        prob = pretrained_model(x).softmax(-1)[0]
    top1 = int(prob.argmax())
    assert top1 in classes, f"top-5 {prob.topk(5).indices.tolist()}"
    assert float(prob[sorted(classes)].sum()) > 0.5  # most of the mass on the right kind of thing


def test_pretrained_gray_input_still_sees_a_cat():
    """``in_chans=1`` folds the RGB stem into one channel: a gray cat is still a cat."""
    try:
        model = create_model("efficientnet_lite0", pretrained=True, in_chans=1).eval()
    except AssetError as e:
        pytest.skip(f"asset not available: {e}")
    gray = np.repeat(skdata.chelsea().mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    x = preprocess(gray)[:, :1]
    with torch.no_grad():
        assert int(model(x).argmax()) in CATS
