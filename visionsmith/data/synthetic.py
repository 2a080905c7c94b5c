"""Small, real image files for tests, demos and bug reports.

``make_image_folder`` writes a learnable ``root/<class>/*.png|jpg`` dataset (one coloured shape
per class at a random place and size on a noisy background); ``make_bad_files`` writes one file
of each awkward kind the loaders must survive.  Everything is seeded and takes milliseconds.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "hbars", "vbars", "cross", "ring", "diagonal")
COLOURS = ((220, 40, 40), (40, 170, 60), (50, 80, 220), (230, 200, 30),
           (200, 50, 200), (30, 200, 210), (240, 130, 20), (120, 60, 160))

# Cases of make_bad_files that are not usable images (skipped, or raised with --strict) ...
BAD_CASES = ("zero_byte", "truncated", "not_image", "bomb")
# ... the ones that are unusual but valid and must decode ...
ODD_CASES = ("palette_alpha", "rgba", "la", "gray16", "bit1", "cmyk", "exif_rotated", "float_tiff",
             "png_named_jpg", "animated_gif")
# ... and the one that is not even looked at (skipped for its extension by the folder source).
NOT_IMAGE_EXTENSION = "text_file"


def class_names(n: int) -> list[str]:
    """``n`` class names: the shape names, then ``circle_1``, ... (colour varies) past eight."""
    return [SHAPES[k % len(SHAPES)] + (f"_{k // len(SHAPES)}" if k >= len(SHAPES) else "") for k in range(n)]


def draw_shape(k: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size x size`` RGB image of class ``k``: its shape, in its colour, randomly placed."""
    bg = rng.integers(150, 256, size=(size, size, 3), dtype=np.uint8)  # noisy light background
    im = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(im)
    colour = tuple(int(c) for c in np.roll(COLOURS[k % len(COLOURS)], k // len(SHAPES)))
    r = rng.uniform(0.25, 0.4) * size  # half side
    cx, cy = rng.uniform(r, size - r, size=2)
    box = (cx - r, cy - r, cx + r, cy + r)
    lw = max(1, int(r / 3))
    shape = SHAPES[k % len(SHAPES)]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "hbars":
        for y in (cy - r, cy, cy + r - lw):
            d.rectangle((cx - r, y, cx + r, y + lw), fill=colour)
    elif shape == "vbars":
        for x in (cx - r, cx, cx + r - lw):
            d.rectangle((x, cy - r, x + lw, cy + r), fill=colour)
    elif shape == "cross":
        d.line((cx - r, cy, cx + r, cy), fill=colour, width=lw)
        d.line((cx, cy - r, cx, cy + r), fill=colour, width=lw)
    elif shape == "ring":
        d.ellipse(box, outline=colour, width=lw)
    else:
        d.line((cx - r, cy - r, cx + r, cy + r), fill=colour, width=lw)
    return im


def make_image_folder(root: str | os.PathLike, classes: int = 3, per_class: int = 8, size: int = 24,
                      seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png`` (even i) and ``.jpg`` (odd i) files; return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(class_names(classes)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = draw_shape(k, size, rng)
            if i % 2:
                im.save(root / name / f"{i:04d}.jpg", quality=92)
            else:
                im.save(root / name / f"{i:04d}.png")
    return root


def _jpeg_with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def make_bad_files(root: str | os.PathLike, bomb_side: int = 2000, unreadable: bool = False) -> dict[str, Path]:
    """Write one file per awkward case into ``root``; return ``{case: path}``.

    Not images (``BAD_CASES``): ``zero_byte`` (.png, empty), ``truncated`` (.jpg cut at 60 %),
    ``not_image`` (.png holding text), ``bomb`` (a 1-bit ``bomb_side``-square PNG, a few KB:
    use ``max_pixels < bomb_side**2`` to see it rejected without a 90 M-pixel file), and with
    ``unreadable`` a .png with mode 000 (still readable by root).
    Valid but unusual (``ODD_CASES``), with the expected decoded content:
      palette_alpha  P + transparency: transparent left half -> white, right half red
      rgba / la      alpha 0 on the left half -> white; opaque right half blue / gray 64
      gray16         16-bit gray, every pixel 32896 -> 128 after scaling (Pillow's convert clips to 255)
      bit1           1-bit checkerboard
      cmyk           CMYK JPEG of pure cyan -> about (0, 255, 255)
      exif_rotated   stored 32 wide x 16 high, left half red, right half blue, EXIF orientation 6
                     (rotate 90 degrees clockwise) -> decoded 16 wide x 32 high, red on top
      float_tiff     mode F values in [0, 1] -> scaled to 0..255
      png_named_jpg  a PNG saved as .jpg (decoders sniff content, not the name)
      animated_gif   two frames -> the first (green)
    ``text_file``: notes.txt, which the folder source skips for its extension.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    p = {name: root / f for name, f in [
        ("zero_byte", "zero_byte.png"), ("truncated", "truncated.jpg"), ("not_image", "not_image.png"),
        ("bomb", "bomb.png"), ("palette_alpha", "palette_alpha.png"), ("rgba", "rgba.png"), ("la", "la.png"),
        ("gray16", "gray16.png"), ("bit1", "bit1.png"), ("cmyk", "cmyk.jpg"), ("exif_rotated", "exif_rotated.jpg"),
        ("float_tiff", "float.tiff"), ("png_named_jpg", "png_named.jpg"), ("animated_gif", "animated.gif"),
        ("text_file", "notes.txt")]}

    p["zero_byte"].write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    p["truncated"].write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.6)])
    p["not_image"].write_text("this is a text file with a .png name\n")
    Image.new("1", (bomb_side, bomb_side), 0).save(p["bomb"], optimize=True)

    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black (transparent), 1 red
    ImageDraw.Draw(pal).rectangle((8, 0, 15, 15), fill=1)
    pal.save(p["palette_alpha"], transparency=0)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 0, 0)  # fully transparent black must come out white
    rgba[:, 8:] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(p["rgba"])
    la = np.zeros((16, 16, 2), np.uint8)
    la[:, 8:] = (64, 255)
    Image.fromarray(la, "LA").save(p["la"])

    Image.fromarray(np.full((16, 16), 32896, np.uint16)).save(p["gray16"])  # mode I;16
    Image.fromarray((np.indices((16, 16)).sum(0) % 2).astype(bool)).save(p["bit1"])
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(p["cmyk"], quality=95)
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    p["exif_rotated"].write_bytes(_jpeg_with_orientation(Image.fromarray(stored), 6))
    Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "F").save(p["float_tiff"])
    Image.new("RGB", (16, 16), (10, 20, 30)).save(p["png_named_jpg"], "PNG")
    frames = [Image.new("RGB", (16, 16), (0, 255, 0)), Image.new("RGB", (16, 16), (255, 0, 255))]
    frames[0].save(p["animated_gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    p["text_file"].write_text("notes about this class\n")

    if unreadable:
        p["unreadable"] = root / "unreadable.png"
        Image.new("RGB", (8, 8)).save(p["unreadable"])
        p["unreadable"].chmod(0)
    return p
