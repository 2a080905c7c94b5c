"""Entropy coding of integer latents with ``constriction``'s range coder (MIT/Apache; exact).

    data, coded = encode(values, groups, pmf, lo)   # values: integer-valued float [1, C, h, w]
    values = decode(data, groups, pmf, lo)          # the same ``coded`` tensor, bit for bit

``groups`` says which table codes each element (a channel, or a Gaussian scale); ``pmf`` [T, L]
holds each table's probabilities (float64, zero-padded) over the integers ``lo[t] .. lo[t] + L' - 1``.
The floats are turned into integer frequencies summing to 2**16 (every bin at least 1) before the
coder sees them, so encoder and decoder use identical models.  Elements are coded table by table,
in raster order within a table; the decoder knows ``groups`` (from the shape, or from the decoded
side information) and follows the same order.  Values outside a table's range are clamped to its
ends (their probability is below ``models.codecs.TAIL``): ``encode`` returns what was really coded,
which is what the decoder reconstructs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

PRECISION = 16  # bits of the integer frequency tables


def quantize_pmf(pmf: Tensor) -> list[np.ndarray]:
    """float64 [T, L] (zero-padded rows) -> per table, int64 frequencies summing to 2**PRECISION,
    each at least 1; the remainder of rounding down goes to the largest bins (deterministic)."""
    total = 1 << PRECISION
    out = []
    for row in pmf.double().numpy():
        n = int(np.nonzero(row)[0].max()) + 1 if row.any() else 1
        p = np.maximum(row[:n], 0) / max(row[:n].sum(), 1e-300)
        freq = np.floor(p * (total - n)).astype(np.int64) + 1
        short = total - int(freq.sum())
        order = np.argsort(-p, kind="stable")  # largest first, ties by index: the same in every process
        freq[order[:short % n]] += 1
        freq += short // n
        out.append(freq)
    return out


def _models(freqs: list[np.ndarray]):
    import constriction
    return [constriction.stream.model.Categorical(f / float(1 << PRECISION), perfect=False) for f in freqs]


def encode(values: Tensor, groups: Tensor, pmf: Tensor, lo: Tensor) -> tuple[bytes, Tensor]:
    """Integer-valued ``values`` and their table ``groups`` (same shape) -> (the bytes, the coded values)."""
    import constriction
    freqs = quantize_pmf(pmf)
    models = _models(freqs)
    v = values.double().flatten().numpy()
    g = groups.flatten().numpy()
    coded = np.empty_like(v)
    enc = constriction.stream.queue.RangeEncoder()
    for t in np.unique(g):
        at = np.nonzero(g == t)[0]
        sym = np.clip(v[at] - int(lo[t]), 0, len(freqs[t]) - 1).astype(np.int32)
        enc.encode(sym, models[t])
        coded[at] = sym + int(lo[t])
    data = enc.get_compressed().astype("<u4").tobytes()
    return data, torch.from_numpy(coded).view(values.shape)


def decode(data: bytes, groups: Tensor, pmf: Tensor, lo: Tensor) -> Tensor:
    """The bytes of ``encode`` and the same ``groups`` -> the coded values (float64, ``groups``' shape).
    Raises ``ValueError`` when ``data`` is not a whole number of 32-bit words."""
    import constriction
    if len(data) % 4:
        raise ValueError(f"a range-coded stream is a whole number of 32-bit words; got {len(data)} bytes")
    models = _models(quantize_pmf(pmf))
    g = groups.flatten().numpy()
    out = np.empty(g.shape, dtype=np.float64)
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    for t in np.unique(g):
        at = np.nonzero(g == t)[0]
        out[at] = dec.decode(models[t], len(at)).astype(np.float64) + int(lo[t])
    return torch.from_numpy(out).view(groups.shape)
