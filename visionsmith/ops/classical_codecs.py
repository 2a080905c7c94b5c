"""Classical codecs as rate-distortion baselines: Pillow's JPEG, WebP, AVIF and JPEG 2000 encoders,
each swept over its quality setting on the same photographs as the learned codec.

    points = sweep(images, "webp")   # [{"quality", "bpp", "psnr", "ms_ssim"}], averaged over images

Bits per pixel count the whole file each encoder writes (headers included), as the learned codec's
do.  JPEG: libjpeg with optimised Huffman tables and Pillow's default 4:2:0 chroma subsampling;
WebP: method 6 (slowest, best); AVIF: Pillow's libavif at speed 6; JPEG 2000: OpenJPEG at a target
compression ratio (its quality setting).
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

CACHE_VERSION = 1  # bump when a sweep's scores change meaning
FORMATS = ("jpeg", "webp", "avif", "jpeg2000")
# quality settings per format, low to high; the JPEG 2000 ones are target bits per pixel
QUALITIES = {"jpeg": (3, 5, 8, 12, 18, 25, 35, 50, 65, 80, 90), "webp": (0, 3, 8, 15, 25, 40, 55, 70, 82, 92),
             "avif": (5, 12, 20, 30, 40, 50, 60, 70, 80, 88), "jpeg2000": (0.08, 0.12, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5, 2.2)}


def encode(u8: np.ndarray, fmt: str, quality: float) -> bytes:
    """uint8 [H, W, 3] -> the encoded file's bytes."""
    img, buf = Image.fromarray(u8), io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=int(quality), optimize=True)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=int(quality), method=6)
    elif fmt == "avif":
        img.save(buf, "AVIF", quality=int(quality), speed=6)
    elif fmt == "jpeg2000":
        img.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[24.0 / quality], irreversible=True)
    else:
        raise ValueError(f"unknown codec {fmt!r}; known: {', '.join(FORMATS)}")
    return buf.getvalue()


def round_trip(u8: np.ndarray, fmt: str, quality: float) -> tuple[int, np.ndarray]:
    """(bytes of the file, the decoded uint8 [H, W, 3])."""
    data = encode(u8, fmt, quality)
    with Image.open(io.BytesIO(data)) as im:
        return len(data), np.asarray(im.convert("RGB"))


def quality_near(u8: np.ndarray, fmt: str, nbytes: int) -> tuple[int, int, np.ndarray]:
    """The quality (1..95) whose file is closest in size to ``nbytes`` (file size grows with quality):
    (quality, its bytes, the decoded uint8 [H, W, 3]); ``u8``: [H, W, 3]."""
    lo, hi, best = 1, 95, None
    while lo <= hi:
        q = (lo + hi) // 2
        n, dec = round_trip(u8, fmt, q)
        if best is None or abs(n - nbytes) < abs(best[1] - nbytes):
            best = (q, n, dec)
        lo, hi = (q + 1, hi) if n < nbytes else (lo, q - 1)
    return best


def sweep(images: list[torch.Tensor], fmt: str, qualities=None, progress: bool = True) -> list[dict]:
    """Every image (uint8 [3, H, W]) at every quality -> one point per quality, the mean over images of
    bits per pixel, PSNR and MS-SSIM (how papers average over Kodak).  The result depends only on the
    pixels, the codec and Pillow's version, so it is kept in the cache (``VISIONSMITH_CACHE``) and
    every run on the same photographs reuses it (a sweep of 8 photos takes minutes on two cores)."""
    import hashlib
    import json
    import PIL
    from tqdm.auto import tqdm
    from ..data.cache import cache_dir
    from ..metrics.compression import image_scores
    qualities = tuple(qualities or QUALITIES[fmt])
    h = hashlib.sha256(json.dumps([CACHE_VERSION, fmt, qualities, PIL.__version__]).encode())
    for t in images:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    path = cache_dir() / "codec-baselines" / f"{fmt}-{h.hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())
    points = []
    for q in tqdm(qualities, desc=f"{fmt} sweep", unit="setting", leave=False, disable=not progress):
        rows = []
        for t in images:
            hwc = np.ascontiguousarray(t.permute(1, 2, 0).numpy())
            nbytes, dec = round_trip(hwc, fmt, q)
            rows.append({"bpp": nbytes * 8 / (hwc.shape[0] * hwc.shape[1]),
                         **image_scores(torch.from_numpy(dec.copy()).permute(2, 0, 1), t)})
        ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
        points.append({"quality": q, "bpp": float(np.mean([r["bpp"] for r in rows])),
                       "psnr": float(np.mean([r["psnr"] for r in rows])), "ms_ssim": float(np.mean(ms)) if ms else None})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(points))
    tmp.replace(path)
    return points
