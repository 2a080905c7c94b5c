"""The file ``visionsmith compress`` writes: a small header, then the entropy-coded streams.

    magic "VSIC" | version u8 | model hash 8 bytes | rate level u8 | channels u8 | height u16 |
    width u16 | streams u8 | per stream: length u32, crc32 u32 | the streams' bytes, in order

(little-endian; 20 + 8 per stream bytes: 36 for the scale hyperprior).  The model hash is the first
8 bytes of the sha256 of the weights, so a file decoded with another model is refused by name; the
CRC-32 of each stream catches truncation and damage before the decoder runs (a range decoder fed
damaged bytes does not fail, it returns a wrong image).
"""
from __future__ import annotations

import hashlib
import struct
import zlib

import torch

MAGIC = b"VSIC"
VERSION = 1
_HEAD = struct.Struct("<4sB8sBBHHB")
_STREAM = struct.Struct("<II")


class BitstreamError(ValueError):
    """A file that cannot be decoded: not ours, damaged, truncated, or from another model."""


def model_hash(model: torch.nn.Module) -> bytes:
    """8 bytes that identify the weights: sha256 over every tensor of the state dict, in key order."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.digest()[:8]


def pack(mhash: bytes, shape: tuple[int, int, int], level: int, streams: list[bytes]) -> bytes:
    """(model hash, (C, H, W) of the image, the rate level, the coded streams) -> the file's bytes."""
    c, h, w = shape
    if max(h, w) > 0xFFFF:
        raise BitstreamError(f"images up to 65535 pixels on a side fit the header; this one is {w}x{h}")
    parts = [_HEAD.pack(MAGIC, VERSION, mhash, level, c, h, w, len(streams))]
    parts += [_STREAM.pack(len(s), zlib.crc32(s)) for s in streams]
    return b"".join(parts + list(streams))


def unpack(data: bytes, mhash: bytes | None = None) -> tuple[tuple[int, int, int], int, list[bytes]]:
    """The file's bytes -> ((C, H, W), level, streams); ``mhash``: refuse a file made by other weights."""
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise BitstreamError("not a visionsmith compressed image (it does not start with 'VSIC')")
    magic, version, h8, level, c, h, w, n = _HEAD.unpack_from(data)
    if version != VERSION:
        raise BitstreamError(f"format version {version}; this visionsmith reads version {VERSION}")
    if mhash is not None and h8 != mhash:
        raise BitstreamError(f"made by another model (weights {h8.hex()}; this run's are {mhash.hex()}): "
                             "decode it with the run that compressed it")
    at = _HEAD.size + n * _STREAM.size
    if len(data) < at:
        raise BitstreamError(f"truncated: the header alone needs {at} bytes, the file has {len(data)}")
    streams = []
    for i in range(n):
        size, crc = _STREAM.unpack_from(data, _HEAD.size + i * _STREAM.size)
        s = data[at:at + size]
        if len(s) < size:
            raise BitstreamError(f"truncated: stream {i + 1} of {n} needs {size} bytes, {len(s)} are left")
        if zlib.crc32(s) != crc:
            raise BitstreamError(f"damaged: stream {i + 1} of {n} fails its CRC-32 check")
        streams.append(s)
        at += size
    if at != len(data):
        raise BitstreamError(f"{len(data) - at} unexpected bytes after the last stream (damaged or concatenated)")
    return (c, h, w), level, streams
