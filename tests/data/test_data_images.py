"""load_image / image_to_uint8 on real files: every bad case is a BadImageError naming the file,
every odd-but-valid case decodes to the right 8-bit pixels."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from visionsmith.data import (BadImageError, DataError, image_to_uint8, images_to_tensor, load_image,
                              decode_to_tensor)
from visionsmith.data import synthetic


@pytest.mark.parametrize("case, reason", [("zero_byte", "zero-byte"), ("truncated", "truncated"),
                                          ("not_image", "not an image"), ("text_file", "not an image")])
def test_bad_files_raise_with_path_and_reason(bad_files, case, reason):
    with pytest.raises(BadImageError) as err:
        load_image(bad_files[case])
    assert err.value.path == str(bad_files[case])
    assert reason in err.value.reason
    assert str(bad_files[case]) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)


def test_decompression_bomb_with_low_limit(bad_files):
    with pytest.raises(BadImageError, match="decompression bomb: 2000x2000") as err:
        load_image(bad_files["bomb"], max_pixels=1_000_000)
    assert err.value.path == str(bad_files["bomb"])
    assert load_image(bad_files["bomb"], max_pixels=10_000_000).size == (2000, 2000)


def test_real_decompression_bombs_at_default_limit(tmp_path):
    # 1-bit PNGs of one colour compress to a few KB however many pixels they claim
    above_ours = tmp_path / "bomb90M.png"  # 90.25 M pixels: above the default (Pillow's 89.5 M)
    Image.new("1", (9500, 9500)).save(above_ours)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(above_ours)
    above_pillow = tmp_path / "bomb190M.png"  # above 2x Pillow's limit: Pillow itself refuses to open it
    Image.new("1", (13800, 13800)).save(above_pillow)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(above_pillow, max_pixels=10 ** 12)


def test_unreadable_paths(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(BadImageError, match="is a directory"):
        load_image(folder)
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImageError, match="not found"):
        load_image(link)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path):
    p = synthetic.make_bad_files(tmp_path, unreadable=True)["unreadable"]
    with pytest.raises(BadImageError, match="permission denied"):
        load_image(p)


def px(img, x, y):
    return tuple(np.asarray(img)[y, x].tolist()) if img.mode == "RGB" else int(np.asarray(img)[y, x])


def test_palette_with_transparency_composited_on_white(bad_files):
    im = load_image(bad_files["palette_alpha"])
    assert im.mode == "RGB" and px(im, 0, 0) == (255, 255, 255) and px(im, 15, 15) == (255, 0, 0)


def test_alpha_composited_on_white(bad_files):
    im = load_image(bad_files["rgba"])
    assert px(im, 0, 0) == (255, 255, 255) and px(im, 15, 0) == (0, 0, 255)
    la = load_image(bad_files["la"], grayscale=True)
    assert la.mode == "L" and px(la, 0, 0) == 255 and px(la, 15, 0) == 64


def test_16bit_scaled_not_clipped(bad_files, tmp_path):
    im = load_image(bad_files["gray16"], grayscale=True)
    assert im.mode == "L" and np.asarray(im).max() == 128 and np.asarray(im).min() == 128  # 32896 / 257
    assert px(load_image(bad_files["gray16"]), 3, 3) == (128, 128, 128)
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    p = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(p)
    out = np.asarray(load_image(p, grayscale=True)).astype(int)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200  # full range kept, not clipped
    assert np.abs(out - ramp / 257).max() <= 0.5 + 1e-9


def test_16bit_transparency_is_white(tmp_path):
    a = np.zeros((4, 4), np.uint16)
    a[:, 2:] = 40000
    Image.fromarray(a).save(tmp_path / "t16.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "t16.png", grayscale=True))
    assert out[0].tolist() == [255, 255, 156, 156]


@pytest.mark.parametrize("mode, values, expect", [
    ("I;16B", [0, 65535], [0, 255]),  # big-endian 16-bit TIFF data
    ("I", [0, 65535], [0, 255]),      # 32-bit int holding 16-bit values
    ("I", [0, 200], [0, 200]),        # 32-bit int holding 8-bit values keeps them
    ("F", [0.0, 1.0], [0, 255]),      # float in [0, 1]
    ("F", [-1.0, 3.0], [0, 255]),     # float of any range is stretched
])
def test_high_bit_depth_modes(tmp_path, mode, values, expect):
    if mode == "I;16B":
        im = Image.frombytes("I;16B", (2, 1), np.array(values, ">u2").tobytes())
    else:
        im = Image.fromarray(np.array([values], np.int32 if mode == "I" else np.float32), mode)
    p = tmp_path / "x.tiff"
    im.save(p)
    assert np.asarray(load_image(p, grayscale=True)).ravel().tolist() == expect


def test_cmyk_bit1_gif_and_float(bad_files):
    cmyk = load_image(bad_files["cmyk"])
    assert cmyk.mode == "RGB" and np.allclose(px(cmyk, 8, 8), (0, 255, 255), atol=3)
    bit1 = np.asarray(load_image(bad_files["bit1"], grayscale=True))
    assert set(np.unique(bit1).tolist()) == {0, 255}
    assert px(load_image(bad_files["animated_gif"]), 4, 4) == (0, 255, 0)  # first frame
    f = np.asarray(load_image(bad_files["float_tiff"], grayscale=True))
    assert f.min() == 0 and f.max() == 255
    assert px(load_image(bad_files["png_named_jpg"]), 0, 0) == (10, 20, 30)


def test_exif_orientation_applied(bad_files):
    raw = Image.open(bad_files["exif_rotated"])
    assert raw.size == (32, 16)  # stored landscape
    im = load_image(bad_files["exif_rotated"])
    assert im.size == (16, 32)  # shown portrait: rotated 90 degrees clockwise
    a = np.asarray(im).astype(int)
    assert (np.abs(a[:14] - (255, 0, 0)) < 20).all()  # stored left (red) is now on top
    assert (np.abs(a[18:] - (0, 0, 255)) < 20).all()
    t = decode_to_tensor(bad_files["exif_rotated"], 16, grayscale=False)
    assert t.shape == (3, 16, 16)  # 16x32 -> shorter side 16, center crop: the seam in the middle row
    assert t[0, 0, 8] > 200 and t[2, 15, 8] > 200


def test_image_to_uint8_resizes_shorter_side_and_center_crops():
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)   # left quarter: cropped away
    a[:, 10:30] = (0, 0, 255)  # middle half: kept
    a[:, 30:] = (0, 255, 0)   # right quarter: cropped away
    t = image_to_uint8(Image.fromarray(a), 16, grayscale=False)
    assert t.shape == (3, 16, 16) and t.dtype == torch.uint8
    assert (t[2] > 180).float().mean() > 0.85 and (t[0] > 128).sum() == 0 and (t[1] > 128).sum() == 0
    g = image_to_uint8(Image.fromarray(a), 8, grayscale=True)
    assert g.shape == (1, 8, 8)
    batch = images_to_tensor([Image.fromarray(a)] * 3, 12, grayscale=False)
    assert batch.shape == (3, 3, 12, 12) and torch.equal(batch[0], batch[2])
    assert images_to_tensor([], 12, grayscale=True).shape == (0, 1, 12, 12)


def test_grayscale_and_rgb_modes(tmp_path):
    p = tmp_path / "c.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(p)
    assert load_image(p).mode == "RGB"
    g = load_image(p, grayscale=True)
    assert g.mode == "L" and px(g, 0, 0) == 76  # ITU-R 601 luma of pure red
    p2 = tmp_path / "g.png"
    Image.new("L", (4, 4), 77).save(p2)
    assert px(load_image(p2), 1, 1) == (77, 77, 77)
