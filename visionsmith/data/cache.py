"""Decode a list of image files once, and keep the result in ``$VISIONSMITH_HOME/cache/``.

The cache key hashes every file's path, size and mtime together with the decode settings, so an
edited, added or removed file (or another size) gives a new key and a fresh decode; nothing has
to be invalidated by hand.  Files are written atomically (temp file + ``os.replace``), so an
interrupted run leaves either no cache or a whole one, and are read with
``torch.load(weights_only=True)``: a cache file cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .. import assets
from .errors import BadImageError
from .images import DEFAULT_MAX_PIXELS, decode_to_tensor

_FORMAT = 1
PROGRESS_MIN_FILES = 200  # a progress bar for anything slower than a blink

# Counters for tests and for the CLI to report: how many files were decoded, how many whole
# datasets (folder/csv lists or Fashion-MNIST) came from the cache.
stats = {"decoded": 0, "cache_hits": 0, "cache_writes": 0}


def cache_dir() -> Path:
    return assets.home() / "cache"


def cache_key(paths: list[str], size: int, grayscale: bool, max_pixels: int) -> str:
    """sha256 over (format, sorted paths with size and mtime, size, grayscale, max_pixels)."""
    h = hashlib.sha256(json.dumps([_FORMAT, size, bool(grayscale), int(max_pixels)]).encode())
    for p in sorted(paths):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        # surrogateescape: a file name that is not valid UTF-8 (bytes decoded by os.fsdecode) hashes as its bytes
        h.update(f"{p}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def read_blob(path: Path) -> dict | None:
    """A cache file's dict, or None when it is missing, damaged or from another format version."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return None  # damaged or from another version: decode again and overwrite
    return blob if isinstance(blob, dict) and blob.get("format") == _FORMAT else None


def write_blob(path: Path, blob: dict) -> None:
    """Write ``blob`` (plus the format version) to ``path`` atomically; a failure only warns."""
    blob = {**blob, "format": _FORMAT}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        stats["cache_writes"] += 1
    except OSError as e:  # a read-only home only costs a decode next time
        print(f"visionsmith: could not write the image cache {path}: {e}", file=sys.stderr)


def decode_files(paths: list[str], size: int, grayscale: bool, strict: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, use_cache: bool = True,
                 desc: str = "decoding images") -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Decode ``paths`` (deduplicated, sorted) to ``uint8 [M, C, size, size]``.

    Returns ``(images, kept_paths, skipped)``: ``kept_paths[i]`` is the file of ``images[i]``;
    ``skipped`` lists ``(path, reason)`` of the files that are not usable images.  With
    ``strict`` the first bad file raises its ``BadImageError`` instead (also when the result
    comes from the cache).  Decoding runs on a few threads (Pillow releases the GIL).
    """
    paths = sorted(set(os.fspath(p) for p in paths))
    c = 1 if grayscale else 3
    file = cache_dir() / f"images-{cache_key(paths, size, grayscale, max_pixels)}.pt"
    blob = read_blob(file) if use_cache else None
    if blob is not None and not (isinstance(blob.get("images"), torch.Tensor)
                                 and len(blob.get("paths", ())) == blob["images"].shape[0]):
        blob = None
    if blob is not None:
        stats["cache_hits"] += 1
        skipped = list(zip(blob["skipped_paths"], blob["skipped_reasons"]))
        if strict and skipped:
            raise BadImageError(*skipped[0])
        return blob["images"], list(blob["paths"]), skipped

    def one(p: str):
        try:
            return decode_to_tensor(p, size, grayscale, max_pixels)
        except BadImageError as e:
            if strict:
                raise
            return e

    from tqdm import tqdm

    kept, tensors, skipped = [], [], []
    workers = max(1, min(8, os.cpu_count() or 1))
    # an explicit disable= would override tqdm's own TQDM_DISABLE variable, so honour it here
    quiet = len(paths) <= PROGRESS_MIN_FILES or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr,
                                                  disable=quiet) as bar:
        try:
            for p, out in zip(paths, pool.map(one, paths)):  # map keeps order: strict raises the first bad file
                stats["decoded"] += 1
                bar.update()
                if isinstance(out, BadImageError):
                    skipped.append((p, out.reason))
                else:
                    kept.append(p)
                    tensors.append(out)
        except BadImageError:
            pool.shutdown(wait=True, cancel_futures=True)  # strict: do not decode the rest first
            raise
    images = torch.stack(tensors) if tensors else torch.empty(0, c, size, size, dtype=torch.uint8)
    if use_cache:
        write_blob(file, {"images": images, "paths": kept,
                      "skipped_paths": [p for p, _ in skipped], "skipped_reasons": [r for _, r in skipped]})
    return images, kept, skipped
