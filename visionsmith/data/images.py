"""Decode one image file robustly, and turn a decoded image into the uint8 tensor a model sees.

``load_image`` is the only place that opens user image files, so every odd case is handled here
once: zero-byte, truncated, non-image and unreadable files and decompression bombs become a
``BadImageError`` naming the file; palette, alpha, 16-bit, float, CMYK, 1-bit and EXIF-rotated
images become plain 8-bit ``RGB`` (or ``L``).  ``image_to_uint8`` is the one resize rule used both
when a dataset is cached and when ``predict`` reads a single file, so the two cannot drift apart.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImageError

# Pillow's own limit (~89.5 M pixels, e.g. 9459 x 9459).  Pillow warns above it and raises above
# twice it; here anything above ``max_pixels`` is an error, checked from the header before decoding.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Extensions treated as images by the folder source (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking, like F.interpolate(antialias=True)


def max_file_bytes(max_pixels: int) -> int:
    """The largest image file read for ``max_pixels``: 8 bytes a pixel (uncompressed 16-bit RGBA, the
    widest layout Pillow reads here) plus 16 MB of headers and metadata."""
    return int(max_pixels) * 8 + 16 * 2**20


def printable_path(p: str | os.PathLike) -> str:
    """A path for messages and JSON: a file name that is not valid UTF-8 (undecodable bytes kept by
    Python as lone surrogates) shows U+FFFD in their place instead of breaking an encoder."""
    return os.fsencode(p).decode("utf-8", "replace")


def load_image(path: str | os.PathLike, grayscale: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``path`` into an 8-bit PIL image of mode ``"RGB"`` (or ``"L"`` when ``grayscale``).

    Raises ``BadImageError(path, reason)`` for a missing, unreadable, zero-byte, truncated or
    non-image file and for an image larger than ``max_pixels`` (a decompression bomb).  The EXIF
    orientation is applied, so a phone photo comes out the way it is shown.  Multi-frame files
    (GIF, TIFF) give their first frame.
    """
    path = Path(path)
    try:
        # Look before reading: a FIFO would block forever, a link to /dev/zero or a sparse multi-GB file
        # would be read whole into memory.  Only regular files up to what max_pixels can need are read.
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
                stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            raise BadImageError(path, f"is {kind}, not an image file")
        limit = max_file_bytes(max_pixels)
        if st.st_size > limit:
            raise BadImageError(path, f"is {st.st_size / 2**20:.0f} MB, more than any image of at most {max_pixels} "
                                      f"pixels needs ({limit / 2**20:.0f} MB); raise data.max_pixels if it is real")
        # Read the bytes ourselves: the OS error (missing, directory, permissions) is then ours to
        # word, and no file handle stays open behind a lazily loaded PIL image.
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadImageError(path, "file not found (or a broken link)") from None
    except IsADirectoryError:
        raise BadImageError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise BadImageError(path, "cannot read the file: permission denied; fix its permissions") from None
    except OSError as e:
        raise BadImageError(path, f"cannot read the file: {e.strerror or e}") from None
    return load_image_bytes(data, path, grayscale, max_pixels)


def load_image_bytes(data: bytes, name: str | os.PathLike = "<bytes>", grayscale: bool = False,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``load_image`` for bytes already in memory (an upload): the same checks and conversions.

    ``name`` only labels the ``BadImageError`` (a file name, or ``"upload 2"``).
    """
    path = name
    if not data:
        raise BadImageError(path, "zero-byte file (empty); re-copy or delete it")

    with warnings.catch_warnings():
        # Pillow's bomb warning is replaced by the explicit max_pixels check below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise BadImageError(path, f"decompression bomb: {e}") from None
        except UnidentifiedImageError:
            raise BadImageError(path, "not an image (the content is not a format Pillow can read)") from None
        except Exception as e:  # a corrupt header can raise almost anything inside a plugin
            raise BadImageError(path, f"corrupt image header: {type(e).__name__}: {e}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise BadImageError(path, f"decompression bomb: {w}x{h} = {w * h} pixels is above the limit "
                                      f"of {max_pixels}; shrink the image or raise max_pixels")
        if w == 0 or h == 0:
            raise BadImageError(path, f"image has no pixels ({w}x{h})")
        try:
            im.load()
        except Exception as e:  # "image file is truncated", broken zlib/JPEG streams, ...
            raise BadImageError(path, f"truncated or corrupt image data ({im.format}): {e}") from None

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass  # a malformed EXIF block only loses the orientation, the pixels are fine
    try:
        return _to_8bit(im, grayscale)
    except (ValueError, OSError) as e:
        raise BadImageError(path, f"unsupported image mode {im.mode!r}: {e}") from None


def _to_8bit(im: Image.Image, grayscale: bool) -> Image.Image:
    """Any Pillow mode -> 8-bit ``RGB`` or ``L``.  Alpha is composited on white, high bit depths scaled."""
    out_mode = "L" if grayscale else "RGB"
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info)
    if has_alpha:
        # Transparent pixels take the white background, not whatever colour the file stored there.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(out_mode)
    if im.mode.startswith("I") or im.mode == "F":
        trns = im.info.get("transparency")  # a 16-bit PNG's tRNS: one gray value that is transparent
        clear = np.asarray(im) == trns if isinstance(trns, int) else None
        im = _scale_to_l(im)  # 16/32-bit and float images: one channel of scaled values
        if clear is not None and clear.any():
            a = np.array(im)
            a[clear] = 255  # on white, like every other transparent pixel
            im = Image.fromarray(a, mode="L")
    if im.mode == out_mode:
        return im
    return im.convert(out_mode)  # P, 1, L, RGB, CMYK, YCbCr, ... (Pillow's ITU-R 601 luma for L)


def _scale_to_l(im: Image.Image) -> Image.Image:
    """A high-bit-depth single-channel image -> ``L`` by scaling (Pillow's own convert clips at 255).

    ``I;16*``: the full 16-bit range maps to 0..255.  ``I`` (32-bit int) and ``F`` (float): values
    already in 0..255 (or 0..1 for ``F``) keep their meaning, 16-bit ranges are scaled like I;16,
    anything else is stretched from its min to its max.
    """
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        a = a / 257.0  # 65535 / 255 == 257 exactly
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def image_to_uint8(img: Image.Image, size: int, grayscale: bool) -> torch.Tensor:
    """A decoded image -> ``uint8 [C, size, size]`` (C = 1 when ``grayscale`` else 3).

    Rule: scale the *shorter* side to ``size`` and center-crop the longer one (Pillow bilinear,
    antialiased when shrinking).  Nothing is squashed, so the aspect ratio is kept; the price is
    that the ends of the longer side of a non-square image are cut.  Training caches and
    ``predict`` both use this one function.
    """
    mode = "L" if grayscale else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=_RESAMPLE)
    return pil_to_uint8(img, 1 if grayscale else 3)


def pil_to_uint8(img: Image.Image, in_chans: int) -> torch.Tensor:
    """A decoded image at its own size -> uint8 ``[C, H, W]`` with C = ``in_chans`` (1: luma; 3: RGB);
    ``image_to_uint8`` is the same with the resize-and-crop to a square."""
    mode = "L" if in_chans == 1 else "RGB"
    a = np.asarray(img if img.mode == mode else img.convert(mode), dtype=np.uint8)
    t = torch.from_numpy(a.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def decode_to_tensor(path: str | os.PathLike, size: int, grayscale: bool,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``load_image`` + ``image_to_uint8``: a file -> ``uint8 [C, size, size]`` (or ``BadImageError``)."""
    return image_to_uint8(load_image(path, grayscale, max_pixels), size, grayscale)


def images_to_tensor(images: list[Image.Image], size: int, grayscale: bool) -> torch.Tensor:
    """Several decoded images -> ``uint8 [B, C, size, size]`` with the same rule as ``image_to_uint8``."""
    c = 1 if grayscale else 3
    if not images:
        return torch.empty(0, c, size, size, dtype=torch.uint8)
    return torch.stack([image_to_uint8(im, size, grayscale) for im in images])


def has_image_extension(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def decode_notes(src, in_chans: int) -> list[str]:
    """What ``load_image`` changes about an image file (a path or a binary file object) for a model of
    ``in_chans`` channels, in words: more than 8 bits, an alpha channel, grey to colour or colour to grey.
    Only the header is read."""
    try:
        with Image.open(src) as im:
            mode, info = im.mode, im.info
    except Exception:  # noqa: BLE001 - load_image reports the real problem
        return []
    notes = []
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"{mode} image (more than 8 bits) scaled to 8 bits")
    if mode in ("RGBA", "LA", "PA") or "transparency" in info:
        notes.append("alpha channel composited on white")
    if in_chans == 3 and mode in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("grey image given to a colour model: converted to RGB (three equal channels)")
    if in_chans == 1 and mode not in ("L", "LA", "1", "I;16", "I;16B", "I;16L", "I", "F"):
        notes.append("colour image given to a grey model: converted to luma")
    return notes
