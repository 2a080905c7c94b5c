"""BatchTransform: shapes, channel handling, exact determinism from the generator, real flips."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionsmith.config import AugmentConfig
from visionsmith.data import BatchTransform


def images(b=16, c=1, s=28, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("c, in_chans", [(1, 1), (1, 3), (3, 3), (3, 1)])
def test_shape_dtype(train, c, in_chans):
    t = BatchTransform(train, 32, in_chans, AugmentConfig(translate=0.1))
    out = t(images(c=c), gen(0))
    assert out.shape == (16, in_chans, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1  # pixels: the model normalises


def test_same_generator_state_gives_identical_batches():
    t = BatchTransform(True, 32, 3, AugmentConfig(scale=(0.5, 1.0), translate=0.1))
    x = images(64)
    a, b = t(x, gen(7)), t(x, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, t(x, gen(8)))
    g = gen(7)
    first, second = t(x, g), t(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances
    # resuming from a saved generator state reproduces the next batch exactly
    g = gen(3)
    t(x, g)
    state = g.get_state()
    nxt = t(x, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(t(x, g2), nxt)


def test_eval_is_deterministic_plain_resize_to_pixels():
    t = BatchTransform(False, 32, 1, AugmentConfig())
    x = images(8)
    a, b = t(x), t(x, gen(1))
    assert torch.equal(a, b)
    ref = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(a, ref)  # [0, 1] pixels, no normalisation
    down = BatchTransform(False, 14, 3, AugmentConfig())(images(2, c=3))
    assert down.shape == (2, 3, 14, 14)


def test_output_is_a_new_contiguous_tensor():
    x = torch.rand(2, 1, 28, 28)
    same = BatchTransform(False, 28, 1)(x)  # nothing to resize: still a copy, never the input itself
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    rgb = BatchTransform(False, 28, 3)(x)  # gray repeated to 3 channels: materialised
    assert rgb.is_contiguous() and rgb.stride() == (3 * 28 * 28, 28 * 28, 28, 1)


def test_gray_to_rgb_repeats_and_rgb_to_gray_uses_luma():
    t = BatchTransform(False, 28, 3, AugmentConfig())
    px = t(images(4))
    assert torch.allclose(px[:, 0], px[:, 1], atol=1e-6) and torch.allclose(px[:, 1], px[:, 2], atol=1e-6)
    red = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    red[:, 0] = 255
    g = BatchTransform(False, 28, 1, AugmentConfig())
    assert torch.allclose(g(red), torch.full((1, 1, 28, 28), 0.299), atol=1e-5)


def test_flip_flips_about_half_the_time():
    # no crop, no shift, same size: every output is exactly the input or its mirror image
    t = BatchTransform(True, 28, 1, AugmentConfig(hflip=True, scale=(1.0, 1.0), translate=0.0))
    x = images(400)
    px = t(x, gen(0))
    src = x.float() / 255
    same = (px - src).abs().flatten(1).max(1).values < 1e-5
    mirrored = (px - src.flip(-1)).abs().flatten(1).max(1).values < 1e-5
    assert (same ^ mirrored).all()
    assert 0.4 < mirrored.float().mean() < 0.6
    no_flip = BatchTransform(True, 28, 1, AugmentConfig(hflip=False, scale=(1.0, 1.0)))
    assert torch.allclose(no_flip(x, gen(0)), src, atol=1e-5)


def test_crop_and_translate_change_content():
    x = images(32)
    crop = BatchTransform(True, 28, 1, AugmentConfig(hflip=False, scale=(0.3, 0.3)))
    px = crop(x, gen(0))
    assert (px - x.float() / 255).abs().mean() > 0.1  # zoomed in: not the input
    ones = torch.full((32, 1, 28, 28), 255, dtype=torch.uint8)
    shift = BatchTransform(True, 28, 1, AugmentConfig(hflip=False, scale=(1.0, 1.0), translate=0.2))
    border = shift(ones, gen(0))
    assert (border < 0.01).flatten(1).any(1).float().mean() > 0.9  # shifted in: black edges


def test_large_inputs_are_shrunk_before_warping():
    t = BatchTransform(True, 16, 3, AugmentConfig(scale=(0.25, 1.0)))
    out = t(images(4, c=3, s=128), gen(0))
    assert out.shape == (4, 3, 16, 16)


def test_boxes_move_with_the_pixels_and_degenerate_ones_are_dropped():
    # A white rectangle on black: after a random crop/flip/shift the transformed box must bound the
    # white pixels of the warped image (to within the bilinear edge), or be dropped when cropped away.
    from visionsmith.config import AugmentConfig
    from visionsmith.data import BatchTransform
    g = torch.Generator().manual_seed(3)
    n, size = 16, 64
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    boxes = []
    for i in range(n):
        x1, y1 = torch.randint(0, 40, (2,), generator=g).tolist()
        w, h = torch.randint(8, 24, (2,), generator=g).tolist()
        images[i, 0, y1:y1 + h, x1:x1 + w] = 255
        boxes.append(torch.tensor([[x1, y1, x1 + w, y1 + h]], dtype=torch.float32))
    tf = BatchTransform(True, 48, 1, AugmentConfig(hflip=True, scale=(0.4, 1.0), translate=0.2))
    out = tf.apply(images, torch.Generator().manual_seed(4), boxes=boxes)
    checked = dropped = 0
    for i in range(n):
        white = out["image"][i, 0] > 0.5
        if not out["keep"][i].any():
            assert white.sum() < 48 * 2  # at most a sliver of the rectangle is left
            dropped += 1
            continue
        ys, xs = white.nonzero(as_tuple=True)
        x1, y1, x2, y2 = out["boxes"][i][0].tolist()
        assert abs(xs.min() - x1) <= 1.5 and abs(ys.min() - y1) <= 1.5
        assert abs(xs.max() + 1 - x2) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
        checked += 1
    assert checked >= 10
    # eval: a plain resize scales the boxes
    ev = BatchTransform(False, 32, 1).apply(images, boxes=boxes)
    assert torch.allclose(ev["boxes"][0], boxes[0] / 2)
