"""Tiled inference: run an image-to-image network on an image of any size, one tile at a time.

    y = tiled(net, x, tile=256, pad=net.receptive_radius, scale=net.scale)   # x [1, C, H, W] -> [1, C, sH, sW]

Tiles of ``tile`` input pixels overlap by ``2 * pad + blend``.  Each tile's output is weighted 0 within
``pad`` pixels of an edge it shares with a neighbour (those pixels saw the tile's zero padding, not the
image), then ramps linearly to 1 over ``blend`` pixels; the weights of overlapping tiles are
normalised.  With ``pad`` at least the network's receptive radius, every pixel with a non-zero weight
is exactly what the whole-image pass computes there (edges on the image border pad with zeros in
both passes), so tiled and whole outputs agree to float rounding everywhere, and the ramp leaves
no seam even for a network whose context is wider than ``pad``.
"""
from __future__ import annotations

from typing import Callable

import torch


def _spans(n: int, tile: int, step: int, align: int) -> list[tuple[int, int]]:
    """(start, end) of tiles covering [0, n): every ``step``, the last one reaching the end; starts are
    multiples of ``align`` (so the last tile may be up to ``align - 1`` longer than ``tile``)."""
    if n <= tile:
        return [(0, n)]
    starts = list(range(0, n - tile, step)) + [(n - tile) // align * align]
    return [(s, min(s + tile, n)) for s in starts[:-1]] + [(starts[-1], n)]


def _ramp(length: int, lo_inner: bool, hi_inner: bool, pad: int, blend: int) -> torch.Tensor:
    """1-D weight [length]: 0 for ``pad`` then a linear ramp over ``blend`` at each inner end, 1 elsewhere."""
    w = torch.ones(length)
    ramp = torch.arange(1, blend + 1, dtype=torch.float32) / (blend + 1)
    for inner, flip in ((lo_inner, False), (hi_inner, True)):
        if not inner:
            continue
        edge = torch.cat([torch.zeros(pad), ramp])[:length]
        if flip:
            w[length - len(edge):] = torch.minimum(w[length - len(edge):], edge.flip(0))
        else:
            w[:len(edge)] = torch.minimum(w[:len(edge)], edge)
    return w


@torch.no_grad()
def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, pad: int,
          scale: int = 1, blend: int = 16, align: int = 1) -> torch.Tensor:
    """``fn`` over ``x`` [1, C, H, W] in tiles of ``tile`` x ``tile`` input pixels -> [1, C', sH, sW].

    ``tile <= 0`` or an image that fits one tile: a single call.  ``tile`` must exceed
    ``2 * (2 * pad + blend)`` so that tiles advance.  ``align``: tiles start at multiples of it (a
    U-Net that halves the resolution 3 times computes the same as the whole image only on a grid of 8)."""
    _, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(x)
    overlap = 2 * pad + blend
    step = (tile - overlap) // align * align
    if tile < 2 * overlap or step < 1:
        raise ValueError(f"tile {tile} is too small for an overlap of {overlap} pixels (2 x pad {pad} + blend "
                         f"{blend}); use a tile of at least {2 * overlap}")
    ys, xs = _spans(h, tile, step, align), _spans(w, tile, step, align)
    out = weight = None
    for i, (y0, y1) in enumerate(ys):
        th = y1 - y0
        wy = _ramp(th, i > 0, i < len(ys) - 1, pad, blend)
        for j, (x0, x1) in enumerate(xs):
            tw = x1 - x0
            wx = _ramp(tw, j > 0, j < len(xs) - 1, pad, blend)
            y = fn(x[:, :, y0:y0 + th, x0:x0 + tw]).float()  # [1, C', s*th, s*tw]
            if out is None:
                out = torch.zeros(1, y.shape[1], scale * h, scale * w)
                weight = torch.zeros(1, 1, scale * h, scale * w)
            wt = (wy[:, None] * wx[None, :])  # [th, tw] in input pixels
            if scale > 1:
                wt = wt.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
            sl = (slice(None), slice(None), slice(scale * y0, scale * (y0 + th)), slice(scale * x0, scale * (x0 + tw)))
            out[sl] += y * wt
            weight[sl] += wt
    return out / weight.clamp_min(1e-12)
