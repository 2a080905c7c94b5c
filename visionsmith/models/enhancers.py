"""Image-to-image networks for enhancement (``task: enhancement``): pixels in, pixels out.

    net = create_enhancer("dncnn", in_chans=3, scale=1)      # denoising
    net = create_enhancer("edsr", in_chans=3, scale=2)       # super-resolution x2
    y = net(x)          # x: [B, C, H, W] in [0, 1] -> y: [B, C, H*scale, W*scale], [0, 1] range (unclamped)

Every network has ``scale`` (output side / input side), ``in_chans`` and ``receptive_radius``: how
many input pixels on each side an output pixel depends on (3x3 convolutions add one each).  Tiled
inference (``ops/tiles.py``) overlaps tiles by at least that much, so tiled and whole-image outputs
agree.  Normalisation is inside the model like every visionsmith model (``pixel_norm``: the pixels
are centred on 0.5), and each network adds its input (or its bicubic upsampling) back, so it learns
the residual: the noise, or the detail bicubic interpolation misses.

These are small and fast on purpose (two CPU cores, 30 minutes of training):
- ``dncnn``: Zhang et al., "Beyond a Gaussian Denoiser" (TIP 2017): ``depth`` 3x3 convolutions,
  BatchNorm in the middle ones, predicts the noise (residual learning).
- ``edsr``: Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution" (CVPRW
  2017): residual blocks without BatchNorm, residual scaling, a pixel-shuffle upsampler; at
  ``scale=1`` it is a stronger denoiser than DnCNN for the same depth.
- ``nafnet``: a small U-Net of NAFNet blocks (Chen et al., "Simple Baselines for Image Restoration",
  ECCV 2022), the stronger denoiser: most of its work runs at 1/2-1/8 resolution.
- ``swin2sr``: ``transformers``' Swin2SR, fresh (``model.kwargs``: its config) or from a local folder.
- ``espcn``: Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient
  Sub-Pixel Convolutional Neural Network" (CVPR 2016): three convolutions and a pixel shuffle.
The classification registry (``models/registry.py``) holds backbones with a classifier interface;
these have none, so they have their own small registry here.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownNameError, UserError
from ._base import PixelNorm

_ENHANCERS: dict[str, Callable[..., nn.Module]] = {}


def register_enhancer(fn):
    _ENHANCERS[fn.__name__] = fn
    return fn


def enhancer_names() -> list[str]:
    return sorted(_ENHANCERS)


def create_enhancer(name: str, in_chans: int = 3, scale: int = 1, folder: str | None = None, weights: bool = True,
                    **kwargs) -> nn.Module:
    """``folder``: a local folder of pretrained weights (``model.pretrained: PATH``), for the networks that
    load one (``swin2sr``); ``weights=False`` takes only its architecture (a run folder being reloaded)."""
    if name not in _ENHANCERS:
        raise UnknownNameError(f"model.name={name!r} is not an enhancement network; task enhancement builds "
                               f"{', '.join(enhancer_names())}")
    fn = _ENHANCERS[name]
    if folder is not None:
        if "folder" not in inspect.signature(fn).parameters:
            raise UserError(f"model.pretrained={folder!r}: {name} trains from scratch here; only "
                            f"{', '.join(n for n, f in _ENHANCERS.items() if 'folder' in inspect.signature(f).parameters)} "
                            "load weights from a folder")
        kwargs.update(folder=folder, weights=weights)
    return fn(in_chans=in_chans, scale=scale, **kwargs)


def _norm(in_chans: int) -> PixelNorm:
    return PixelNorm([0.5] * in_chans, [1.0] * in_chans, in_chans)  # centre only: the output keeps the input's scale


class _Upsample(nn.Sequential):
    """conv -> pixel shuffle, once per factor 2 (or once for 3): [B, F, h, w] -> [B, F, h*s, w*s]."""

    def __init__(self, scale: int, width: int):
        layers: list[nn.Module] = []
        if scale in (2, 4, 8):
            for _ in range(scale.bit_length() - 1):
                layers += [nn.Conv2d(width, 4 * width, 3, padding=1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(width, 9 * width, 3, padding=1), nn.PixelShuffle(3)]
        elif scale != 1:
            raise ValueError(f"scale {scale} is not supported (1, 2, 3, 4 or 8)")
        super().__init__(*layers)
        self.convs = sum(isinstance(m, nn.Conv2d) for m in layers)


class _Enhancer(nn.Module):
    """Shared tail: ``forward(x) = base(x) + body(x - 0.5)`` where ``base`` is ``x`` at scale 1 and
    its bicubic upsampling otherwise."""

    scale: int

    def base(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.residual(self.pixel_norm(x))

    def residual(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class DnCNN(_Enhancer):
    """``depth`` convolutions of ``width`` channels: conv-ReLU, (conv-BN-ReLU) x (depth - 2), conv."""

    def __init__(self, in_chans: int = 3, scale: int = 1, depth: int = 17, width: int = 64, bn: bool = True):
        super().__init__()
        if scale != 1:
            raise ValueError("dncnn denoises (scale 1); use edsr or espcn for super-resolution")
        self.in_chans, self.scale, self.pixel_norm = in_chans, 1, _norm(in_chans)
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=not bn)]
            layers += [nn.BatchNorm2d(width)] if bn else []
            layers += [nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, in_chans, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.receptive_radius = depth

    def residual(self, z):
        return -self.body(z)  # the body predicts the noise; the output is the input minus it


class _ResBlock(nn.Module):
    def __init__(self, width: int, res_scale: float):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class EDSR(_Enhancer):
    """head conv, ``blocks`` residual blocks + a conv (with a long skip), upsampler, tail conv."""

    def __init__(self, in_chans: int = 3, scale: int = 2, blocks: int = 8, width: int = 48, res_scale: float = 1.0):
        super().__init__()
        self.in_chans, self.scale, self.pixel_norm = in_chans, int(scale), _norm(in_chans)
        self.head = nn.Conv2d(in_chans, width, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(width, res_scale) for _ in range(blocks)],
                                  nn.Conv2d(width, width, 3, padding=1))
        self.up = _Upsample(self.scale, width)
        self.tail = nn.Conv2d(width, in_chans, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity / bicubic: training only adds detail
        nn.init.zeros_(self.tail.bias)
        # in input pixels: head + 2 per block + body conv, then the upsampler's and tail's (at higher
        # resolution: one input pixel of context covers them)
        self.receptive_radius = 2 + 2 * blocks + self.up.convs + 1

    def residual(self, z):
        h = self.head(z)
        return self.tail(self.up(h + self.body(h)))


class ESPCN(_Enhancer):
    """5x5 conv (64) - tanh - 3x3 conv (32) - tanh - 3x3 conv (C s^2) - pixel shuffle."""

    def __init__(self, in_chans: int = 3, scale: int = 2, width: int = 64):
        super().__init__()
        self.in_chans, self.scale, self.pixel_norm = in_chans, int(scale), _norm(in_chans)
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 5, padding=2), nn.Tanh(),
                                  nn.Conv2d(width, width // 2, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(width // 2, in_chans * self.scale ** 2, 3, padding=1),
                                  nn.PixelShuffle(self.scale))
        self.receptive_radius = 4

    def residual(self, z):
        return self.body(z)


class _ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel ([B, C, H, W] -> same), statistics in float32."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(1, c, 1, 1)), nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        xf = x.float()
        mu = xf.mean(1, keepdim=True)
        var = (xf - mu).pow(2).mean(1, keepdim=True)
        return ((xf - mu) * torch.rsqrt(var + 1e-6) * self.weight + self.bias).to(x.dtype)


class _NAFBlock(nn.Module):
    """NAFNet's block (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022) without its
    channel attention: that attention pools over the whole image, so a tile's output would depend on
    where the tile is, and tiled restoration would not match the whole-image pass.
    norm -> 1x1 (c -> 2c) -> 3x3 depthwise -> gate (half times half) -> 1x1, added with a learned
    scale (started at 0); then norm -> 1x1 (c -> 2c) -> gate -> 1x1, added the same way."""

    def __init__(self, c: int):
        super().__init__()
        self.n1, self.n2 = _ChannelNorm(c), _ChannelNorm(c)
        self.pw1, self.dw = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.pw2, self.ff1, self.ff2 = nn.Conv2d(c, c, 1), nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.beta, self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1)), nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        a, b = self.dw(self.pw1(self.n1(x))).chunk(2, 1)
        x = x + self.beta * self.pw2(a * b)
        a, b = self.ff1(self.n2(x)).chunk(2, 1)
        return x + self.gamma * self.ff2(a * b)


class NAFUNet(_Enhancer):
    """A small NAFNet: a U-Net of ``_NAFBlock`` s.  Level ``l`` (``width * 2^l`` channels, ``1/2^l`` of the
    resolution) has ``enc[l]`` blocks before a 2x2 stride-2 convolution down and ``dec[l]`` after the
    way back up (a 1x1 convolution and a pixel shuffle, the skip added); ``middle`` blocks at the
    bottom.  Most of the work runs at low resolution, so for the compute of a DnCNN it sees far more
    context (receptive radius ~60 pixels against 17).  Inputs are padded (edge pixels repeated) to a
    multiple of ``2^levels`` and the output cropped back; tiles must start on that grid (``align``)."""

    def __init__(self, in_chans: int = 3, scale: int = 1, width: int = 32, enc=(2, 2, 2), middle: int = 2,
                 dec=(2, 2, 2)):
        super().__init__()
        if scale != 1:
            raise ValueError("nafnet denoises (scale 1); use edsr or espcn for super-resolution")
        if len(enc) != len(dec):
            raise ValueError(f"nafnet: enc {list(enc)} and dec {list(dec)} must have one entry per level")
        self.in_chans, self.scale, self.pixel_norm = in_chans, 1, _norm(in_chans)
        self.intro = nn.Conv2d(in_chans, width, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = width
        for n_enc, n_dec in zip(enc, dec):
            self.encoders.append(nn.Sequential(*[_NAFBlock(c) for _ in range(n_enc)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, 2))
            self.ups.insert(0, nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1, bias=False), nn.PixelShuffle(2)))
            self.decoders.insert(0, nn.Sequential(*[_NAFBlock(c) for _ in range(n_dec)]))
            c *= 2
        self.middle = nn.Sequential(*[_NAFBlock(c) for _ in range(middle)])
        self.ending = nn.Conv2d(width, in_chans, 3, padding=1)
        self.align = 2 ** len(enc)
        # input pixels an output pixel can see: a 3x3 (depthwise) convolution at level l adds 2^l, a
        # down-sampling 2^l, and the grid of the lowest level up to 2^levels more; rounded up to the grid
        r = 2 + sum((e + d + 1) * 2 ** lv for lv, (e, d) in enumerate(zip(enc, dec))) + (middle + 1) * self.align
        self.receptive_radius = -(-r // self.align) * self.align

    def residual(self, z):
        h, w = z.shape[-2:]
        z = F.pad(z, (0, -w % self.align, 0, -h % self.align), mode="replicate")  # [B, C, H', W'], multiples of align
        x = self.intro(z)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(up(x) + skip)
        return self.ending(x)[..., :h, :w]


class Swin2SR(nn.Module):
    """``transformers``' Swin2SR (Conde et al., "Swin2SR: SwinV2 Transformer for Compressed Image
    Super-Resolution and Restoration", 2022) behind the enhancer contract: [0, 1] pixels in, the
    upscaled image out (the model subtracts its own mean).

    ``folder``: a local ``save_pretrained`` folder (its config, and its weights unless ``weights`` is
    False: a run folder being reloaded has its own; nothing is downloaded), or None: a fresh model from
    ``config`` (any ``Swin2SRConfig`` field, e.g. ``embed_dim``, ``depths``, ``num_heads``,
    ``upsampler``).  The scale and channels must match the task's."""

    def __init__(self, in_chans: int, scale: int, folder: str | None, config: dict, weights: bool = True):
        super().__init__()
        try:
            from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution
        except ImportError:  # pragma: no cover - transformers is a dependency
            raise UserError("model.name=swin2sr needs transformers (pip install transformers)") from None
        if folder:
            if not (Path(folder) / "config.json").is_file():
                raise UserError(f"model.pretrained={folder!r} is not a Swin2SR folder (no config.json); give "
                                "a folder written by save_pretrained, or leave pretrained false for a fresh model")
            self.net = (Swin2SRForImageSuperResolution.from_pretrained(folder, local_files_only=True) if weights else
                        Swin2SRForImageSuperResolution(Swin2SRConfig.from_pretrained(folder, local_files_only=True)))
        else:
            self.net = Swin2SRForImageSuperResolution(Swin2SRConfig(upscale=scale, num_channels=in_chans,
                                                                    num_channels_out=in_chans, **config))
        c = self.net.config
        if c.upscale != scale or c.num_channels != in_chans:
            raise UserError(f"the Swin2SR model upscales x{c.upscale} with {c.num_channels} channel(s); this run "
                            f"needs x{scale} with {in_chans} (set enhance.scale / model.in_chans to match)")
        self.in_chans, self.scale, self.align = in_chans, scale, c.window_size
        # each of the sum(depths) window-attention layers can reach one window further
        self.receptive_radius = c.window_size * sum(c.depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, sH, sW].  Padded here (edge pixels repeated) to whole windows: the model's
        own padding fails for sizes that are not multiples of its window in transformers 5.x."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.align, 0, -h % self.align), mode="replicate")
        return self.net(pixel_values=x).reconstruction[..., :h * self.scale, :w * self.scale]


@register_enhancer
def dncnn(in_chans: int = 3, scale: int = 1, depth: int = 17, width: int = 64, bn: bool = True) -> nn.Module:
    """DnCNN denoiser (17 layers of 64 channels by default; residual: predicts the noise)."""
    return DnCNN(in_chans, scale, depth, width, bn)


@register_enhancer
def edsr(in_chans: int = 3, scale: int = 2, blocks: int = 8, width: int = 48, res_scale: float = 1.0) -> nn.Module:
    """EDSR-style residual network with a pixel-shuffle upsampler (scale 1: a denoiser)."""
    return EDSR(in_chans, scale, blocks, width, res_scale)


@register_enhancer
def nafnet(in_chans: int = 3, scale: int = 1, width: int = 32, enc=(2, 2, 2), middle: int = 2, dec=(2, 2, 2)) -> nn.Module:
    """A small NAFNet-style U-Net denoiser: more context per FLOP than DnCNN (tiles need ``align``)."""
    return NAFUNet(in_chans, scale, width, tuple(enc), middle, tuple(dec))


@register_enhancer
def swin2sr(in_chans: int = 3, scale: int = 2, folder: str | None = None, weights: bool = True, **config) -> nn.Module:
    """Swin2SR from ``transformers``: a local folder (``model.pretrained: PATH``) or a fresh model whose
    ``Swin2SRConfig`` fields are ``model.kwargs``."""
    return Swin2SR(in_chans, scale, folder, config, weights)


@register_enhancer
def espcn(in_chans: int = 3, scale: int = 2, width: int = 64) -> nn.Module:
    """ESPCN: three convolutions and a pixel shuffle on the bicubic residual (the fastest)."""
    return ESPCN(in_chans, scale, width)
