"""Learned image codecs (``task: compression``): an analysis transform, a quantised latent with a
learned entropy model, a synthesis transform.

    net = create_codec("hyperprior", N=64, M=96, lmbdas=[0.004, 0.013, 0.05])   # three rates, one model
    out = net(x, level)   # x: [B, 3, H, W] in [0, 1], H and W multiples of net.stride; level int64 [B]
                          # -> {"x_hat": [B, 3, H, W], "likelihoods": {"y": [B, M, H/16, W/16], "z": ...}}
                          # (H/8 with stages=3; block_skip=True adds a DCT-started linear path)
    streams = net.compress(x, level=1)        # real bitstreams (ops/entropy.py): {"y": bytes, "z": bytes}
    x_hat = net.decompress(streams, latent_hw, level=1)

The layers follow the published designs that CompressAI implements (its package needs torchvision,
which does not import with CPU torch here, and it downloads its weights, so it cannot be used):
- ``factorized``: Balle, Laparra, Simoncelli, "End-to-end optimized image compression" (ICLR 2017)
  with the non-parametric factorized density of Balle et al. 2018 (appendix 6.1): four 5x5
  stride-2 convolutions with GDN, mirrored with inverse GDN.
- ``hyperprior``: Balle, Minnen, Singh, Hwang, Johnston, "Variational image compression with a
  scale hyperprior" (ICLR 2018): a second latent ``z`` (factorized density) carries the scale of a
  zero-mean Gaussian for each element of ``y``.

Training relaxes rounding the usual way: the entropy model sees ``y + U(-1/2, 1/2)``; the decoder
sees ``round(y)`` with a straight-through gradient (Minnen & Singh 2020: the decoder trains on the
values it will get at test time).  At evaluation both see ``round(y)``.

Bit-exact coding: the coder only ever sees integer frequency tables (``ops/entropy.py``) built from
float64 evaluations of the entropy models, and the hyper-synthesis that picks each element's table
runs in float64, so the encoder and a decoder in another process pick the same table for every
symbol (a float32 difference at a table boundary would desynchronise the stream).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnknownNameError

_CODECS: dict[str, Callable[..., nn.Module]] = {}
LIKELIHOOD_FLOOR = 1e-9  # the smallest likelihood (about 30 bits): keeps -log2 finite
TAIL = 1e-6  # coding tables cover all but this probability mass; values beyond are clamped to the ends


def register_codec(fn):
    _CODECS[fn.__name__] = fn
    return fn


def codec_names() -> list[str]:
    return sorted(_CODECS)


def create_codec(name: str, in_chans: int = 3, **kwargs) -> nn.Module:
    if name not in _CODECS:
        raise UnknownNameError(f"model.name={name!r} is not a learned codec; task compression builds "
                               f"{', '.join(codec_names())}")
    return _CODECS[name](in_chans=in_chans, **kwargs)


class GDN(nn.Module):
    """Generalised divisive normalisation (Balle, Laparra, Simoncelli 2016), [B, C, H, W] -> same:
    ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``; the inverse multiplies instead.
    beta and gamma stay positive through a softplus (CompressAI bounds a squared parameter instead;
    softplus needs no custom gradient).  Computed in float32 even under autocast: the square and the
    square root lose too much in bfloat16."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        inv_softplus = lambda v: math.log(math.expm1(v))  # noqa: E731
        self.beta = nn.Parameter(torch.full((channels,), inv_softplus(1.0)))
        gamma = torch.full((channels, channels), -10.0)  # softplus(-10) = 4.5e-5: off-diagonal ~0 at start
        gamma.fill_diagonal_(inv_softplus(0.1))
        self.gamma = nn.Parameter(gamma)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            gamma = F.softplus(self.gamma)[:, :, None, None]
            norm = torch.sqrt(F.conv2d(x * x, gamma, F.softplus(self.beta)))
            return x * norm if self.inverse else x / norm


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride, k // 2, output_padding=stride - 1)


class FactorizedDensity(nn.Module):
    """A learned univariate density per channel (Balle et al. 2018, appendix 6.1): the cumulative is
    ``sigmoid(f_K(...f_1(v)))`` with ``f_k(v) = h_k(H_k v + b_k)``, ``h_k(u) = u + tanh(a_k) * tanh(u)``
    and positive ``H_k`` (softplus), so it is monotone.  ``filters`` are the hidden widths.  A
    variable-rate codec has one set of densities per rate ``level`` (its latents differ in scale)."""

    def __init__(self, channels: int, levels: int = 1, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels, self.levels = channels, levels
        rows = channels * levels  # parameter row of (level l, channel c): l * channels + c
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((rows, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(rows, widths[i + 1], 1) - 0.5))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(rows, widths[i + 1], 1)))

    def _rows(self, level: Tensor, device) -> Tensor:
        """level int64 [B] -> the parameter rows of every (image, channel), [B * channels]."""
        return (level.to(device).view(-1, 1) * self.channels + torch.arange(self.channels, device=device)).flatten()

    def logits(self, v: Tensor, rows: Tensor) -> Tensor:
        """v: [R, 1, N] -> the cumulative's logits at those points, [R, 1, N] (in v's dtype), row r with
        the parameters of density ``rows[r]``."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            v = torch.matmul(F.softplus(m[rows].to(v.dtype)), v) + b[rows].to(v.dtype)
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i][rows].to(v.dtype)) * torch.tanh(v)
        return v

    def forward(self, y: Tensor, level: Tensor) -> Tensor:
        """y: [B, C, H, W], level int64 [B] -> the probability of the unit interval around each value."""
        with torch.autocast(y.device.type, enabled=False):
            b, c, h, w = y.shape
            v = y.float().reshape(b * c, 1, h * w)
            rows = self._rows(level, y.device)
            lower, upper = self.logits(v - 0.5, rows), self.logits(v + 0.5, rows)
            # evaluate on the side of the sigmoid where it is not saturated (CompressAI does the same)
            sign = -torch.sign(lower + upper).detach()
            p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
            return p.reshape(b, c, h, w).clamp_min(LIKELIHOOD_FLOOR)

    @torch.no_grad()
    def tables(self, level: int = 0, grid: int = 512) -> tuple[Tensor, Tensor]:
        """Per channel at ``level``, the probabilities of the integers that carry all but ``TAIL`` of its
        mass: (pmf float64 [C, L] zero-padded, lo int64 [C]: the integer of column 0); L <= 2 * grid + 1."""
        v = torch.arange(-grid, grid + 2, dtype=torch.float64) - 0.5  # the edges of every integer's bin
        rows = self._rows(torch.tensor([level]), v.device)
        cdf = torch.sigmoid(self.logits(v.expand(self.channels, 1, -1).contiguous(), rows))[:, 0]  # [C, 2g+2]
        keep_lo = (cdf[:, 1:] > TAIL / 2).double().argmax(1)  # first integer whose upper edge passes the tail
        keep_hi = (2 * grid) - (cdf[:, :-1].flip(1) < 1 - TAIL / 2).double().argmax(1)
        width = int((keep_hi - keep_lo).max()) + 1
        pmf = torch.zeros(self.channels, width, dtype=torch.float64)
        for c in range(self.channels):
            lo, hi = int(keep_lo[c]), int(keep_hi[c])
            edges = cdf[c, lo:hi + 2].clone()
            edges[0], edges[-1] = 0.0, 1.0  # fold the tails into the end bins
            pmf[c, :hi - lo + 1] = edges[1:] - edges[:-1]
        return pmf, keep_lo - grid


class GaussianConditional(nn.Module):
    """Zero-mean Gaussians of given scales, integrated over unit bins: ``p(y | sigma)``.  For coding,
    scales snap up to the nearest of ``SCALES`` (64 log-spaced, as CompressAI's default table)."""

    SCALES = torch.exp(torch.linspace(math.log(0.11), math.log(256.0), 64, dtype=torch.float64))
    MIN_SCALE = 0.11

    def forward(self, y: Tensor, scales: Tensor) -> Tensor:
        with torch.autocast(y.device.type, enabled=False):
            s = scales.float().clamp_min(self.MIN_SCALE)
            v = y.float().abs()
            normal = lambda t: 0.5 * torch.erfc(-t / math.sqrt(2))  # noqa: E731  (accurate in the tails)
            p = normal((0.5 - v) / s) - normal((-0.5 - v) / s)
            return p.clamp_min(LIKELIHOOD_FLOOR)

    @classmethod
    def index(cls, scales: Tensor) -> Tensor:
        """scales (float64) -> the index of the smallest table scale >= each (int64, same shape)."""
        return torch.searchsorted(cls.SCALES, scales.double().clamp_min(cls.MIN_SCALE).contiguous()).clamp_max(
            len(cls.SCALES) - 1)

    @classmethod
    def tables(cls) -> tuple[Tensor, Tensor]:
        """(pmf float64 [64, L] zero-padded, lo int64 [64]) of each table scale over the integers that
        carry all but ``TAIL`` of its mass."""
        z = math.sqrt(2) * torch.special.erfinv(torch.tensor(1 - TAIL, dtype=torch.float64))  # two-sided
        reach = torch.ceil(cls.SCALES * z).long()
        pmf = torch.zeros(len(cls.SCALES), int(2 * reach.max()) + 1, dtype=torch.float64)
        for k, (s, r) in enumerate(zip(cls.SCALES, reach.tolist())):
            edges = 0.5 * torch.erfc(-(torch.arange(-r, r + 2, dtype=torch.float64) - 0.5) / s / math.sqrt(2))
            edges[0], edges[-1] = 0.0, 1.0
            pmf[k, :2 * r + 1] = edges[1:] - edges[:-1]
        return pmf, -reach


def _relax(y: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    """(what the entropy model scores, what the decoder gets): noisy and straight-through rounded in
    training, both ``round(y)`` at evaluation."""
    if not training:
        r = torch.round(y)
        return r, r
    return y + torch.empty_like(y).uniform_(-0.5, 0.5), y + (torch.round(y) - y).detach()


def _float32(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` in float32 even under autocast: the block transform's large coefficients (the DC
    term reaches ~100 at the finest rate) would round to 0.5 in bfloat16, as much as the quantiser."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


def block_basis(in_chans: int, block: int, M: int) -> Tensor:
    """``[M, C, block, block]``: orthonormal basis vectors of ``block`` x ``block`` pixel blocks, the
    2-D DCT-II of each channel of a decorrelating colour transform (the orthonormal luma/two-
    chroma-differences basis; grey: itself), lowest frequencies first and luma before chroma at the
    same frequency.  ``M`` larger than ``C * block^2``: the extra rows are zero."""
    n = torch.arange(block, dtype=torch.float64)
    dct = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * block)) * math.sqrt(2 / block)
    dct[0] /= math.sqrt(2)  # [block (frequency), block (position)], orthonormal rows
    colour = (torch.tensor([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=torch.float64)
              / torch.tensor([3, 2, 6], dtype=torch.float64).sqrt()[:, None]) if in_chans == 3 else torch.eye(in_chans, dtype=torch.float64)
    order = sorted(((u + v) * (1 if c == 0 else 2), c, u, v) for c in range(in_chans)
                   for u in range(block) for v in range(block))
    out = torch.zeros(M, in_chans, block, block, dtype=torch.float64)
    for i, (_, c, u, v) in enumerate(order[:M]):
        out[i] = colour[c][:, None, None] * (dct[u][:, None] * dct[v][None, :])[None]
    return out.float()


class _Codec(nn.Module):
    """Shared parts: the transforms ``g_a`` (analysis) and ``g_s`` (synthesis), pixels centred on 0.5,
    and the rate levels: level ``l`` multiplies the latent by a learned positive gain per channel before
    rounding and by a learned inverse gain after (Cui et al., "Asymmetric gained deep image compression
    with continuous rate adaptation", CVPR 2021): a larger gain, a finer quantiser, more bits.  The
    gains start at ``sqrt(lmbda_l / geometric mean)`` (the step size that is rate-distortion optimal
    for MSE scales as ``1 / sqrt(lmbda)``).

    ``stages``: stride-2 layers in each transform (4: the latent is 16 times smaller than the image,
    the published designs; 3: 8 times).  ``block_skip``: a linear path beside each transform, a
    ``2^stages``-pixel block transform started as the orthonormal DCT (``block_basis``): at
    initialisation the codec is a transform coder like JPEG, with a learned quantiser per channel and
    rate and the learned entropy model, and the GDN layers (their last layer started at zero) learn
    what a block transform cannot.  Why: trained from scratch for 30 minutes on two CPU cores the
    plain design stays blurry (held-out PSNR saturates near 23.7 dB on textured photographs even with
    unquantised latents); a sound linear transform from the first step lets the training time go to
    the rate-distortion trade-off instead of learning to reproduce pixels."""

    latents: tuple[str, ...]
    hyper_stride = 1  # the side latent's extra downsampling (the hyperprior: 4)

    def __init__(self, in_chans: int, N: int, M: int, lmbdas, stages: int = 4, block_skip: bool = False):
        super().__init__()
        if stages not in (3, 4):
            raise ValueError(f"stages={stages}: a codec's transforms have 3 or 4 stride-2 layers")
        self.in_chans, self.N, self.M = in_chans, N, M
        self.y_stride = 2 ** stages  # the latent y is this many times smaller than the image
        self.stride = self.y_stride * self.hyper_stride  # H and W must be multiples of this
        self.lmbdas = [float(v) for v in lmbdas]
        self.levels = len(self.lmbdas)
        a, s = [_conv(in_chans, N), GDN(N)], [_deconv(N, in_chans)]
        for _ in range(stages - 2):
            a += [_conv(N, N), GDN(N)]
            s = [_deconv(N, N), GDN(N, True)] + s
        self.g_a = nn.Sequential(*a, _conv(N, M))
        self.g_s = nn.Sequential(_deconv(M, N), GDN(N, True), *s)
        lam = torch.tensor(self.lmbdas, dtype=torch.float64)
        start = (0.5 * (lam.log() - lam.log().mean())).float()[:, None].repeat(1, M)  # [levels, M]
        self.log_gain = nn.Parameter(start.clone())
        self.log_inv_gain = nn.Parameter(-start)
        self.skip_a = self.skip_s = None
        if block_skip:
            b = self.y_stride
            # the uniform quantiser's step that is optimal at the geometric-mean lmbda for an orthonormal
            # transform at high rate: lmbda 255^2 / C * 2 ln2 * step^2 / 12 = 1 bit (per coefficient)
            step = math.sqrt(6 * in_chans / (math.exp(lam.log().mean().item()) * 255 ** 2 * math.log(2)))
            basis = block_basis(in_chans, b, M)  # [M, C, b, b], orthonormal rows
            self.skip_a = nn.Conv2d(in_chans, M, b, b, bias=False)
            self.skip_s = nn.ConvTranspose2d(M, in_chans, b, b, bias=False)
            with torch.no_grad():
                self.skip_a.weight.copy_(basis / step)
                self.skip_s.weight.copy_(basis * step)  # ConvTranspose2d weight: [M, C, b, b], the inverse
                for last in (self.g_a[-1], self.g_s[-1]):
                    last.weight.zero_()
                    last.bias.zero_()

    def gains(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """level int64 [B] -> (gain, inverse gain), each [B, M, 1, 1]."""
        level = level.to(self.log_gain.device)
        return self.log_gain[level].exp()[:, :, None, None], self.log_inv_gain[level].exp()[:, :, None, None]

    def analyze(self, x: Tensor, level: Tensor) -> Tensor:
        """pixels [B, C, H, W] -> the gained latent y [B, M, H/y_stride, W/y_stride] (rounded, it is what is coded)."""
        x = x - 0.5
        y = self.g_a(x)
        if self.skip_a is not None:
            y = y + _float32(self.skip_a, x)
        return y * self.gains(level)[0]

    def synthesize(self, y_hat: Tensor, level: Tensor) -> Tensor:
        """[B, M, h, w] coded integers -> pixels [B, C, h * y_stride, w * y_stride] (unclamped)."""
        y = y_hat * self.gains(level)[1]
        x = self.g_s(y)
        if self.skip_s is not None:
            x = x + _float32(self.skip_s, y)
        return x + 0.5

    @staticmethod
    def _level(x: Tensor, level) -> Tensor:
        if level is None:
            level = 0
        if isinstance(level, int):
            level = torch.full((x.shape[0],), level, dtype=torch.long)
        return level.to(x.device)


@register_codec
def factorized(in_chans: int = 3, N: int = 128, M: int = 192, lmbdas=(0.013,), stages: int = 4,
               block_skip: bool = False) -> nn.Module:
    """Factorized prior (Balle et al. 2017/2018): every latent channel has one learned density."""
    return FactorizedPrior(in_chans, N, M, lmbdas, stages, block_skip)


@register_codec
def hyperprior(in_chans: int = 3, N: int = 128, M: int = 192, lmbdas=(0.013,), stages: int = 4,
               block_skip: bool = False) -> nn.Module:
    """Scale hyperprior (Balle et al. 2018): a side latent z tells each latent element its scale."""
    return ScaleHyperprior(in_chans, N, M, lmbdas, stages, block_skip)


class FactorizedPrior(_Codec):
    latents = ("y",)

    def __init__(self, in_chans: int, N: int, M: int, lmbdas, stages: int = 4, block_skip: bool = False):
        super().__init__(in_chans, N, M, lmbdas, stages, block_skip)
        self.density = FactorizedDensity(M, self.levels)

    def forward(self, x: Tensor, level: Tensor | int | None = None) -> dict:
        """x [B, C, H, W], level int64 [B] (or one int for all; None: 0) -> x_hat and the likelihoods."""
        level = self._level(x, level)
        scored, y_hat = _relax(self.analyze(x, level), self.training)
        return {"x_hat": self.synthesize(y_hat, level), "likelihoods": {"y": self.density(scored, level)}}

    @torch.no_grad()
    def compress(self, x: Tensor, level: int = 0) -> dict:
        """x: [1, C, H, W] (multiples of ``stride``) -> {"y": bytes, "y_hat": the coded integers [1, M, h, w]}."""
        from ..ops.entropy import encode
        y_hat = torch.round(self.analyze(x, self._level(x, level)).double())
        pmf, lo = self.density.tables(level)
        groups = torch.arange(self.M).view(1, -1, 1, 1).expand_as(y_hat)  # table = channel
        data, y_hat = encode(y_hat, groups, pmf, lo)
        return {"y": data, "y_hat": y_hat}

    @torch.no_grad()
    def decompress(self, streams: dict, hw: tuple[int, int], level: int = 0) -> Tensor:
        """{"y": bytes}, the latent's (h, w) and the level -> pixels [1, C, h * y_stride, w * y_stride]."""
        from ..ops.entropy import decode
        pmf, lo = self.density.tables(level)
        groups = torch.arange(self.M).view(1, -1, 1, 1).expand(1, self.M, *hw)
        y_hat = decode(streams["y"], groups, pmf, lo).float()
        return self.synthesize(y_hat, self._level(y_hat, level))


class ScaleHyperprior(_Codec):
    latents = ("y", "z")
    hyper_stride = 4

    def __init__(self, in_chans: int, N: int, M: int, lmbdas, stages: int = 4, block_skip: bool = False):
        super().__init__(in_chans, N, M, lmbdas, stages, block_skip)
        self.h_a = nn.Sequential(_conv(M, N, 3, 1), nn.ReLU(), _conv(N, N), nn.ReLU(), _conv(N, N))
        self.h_s = nn.Sequential(_deconv(N, N), nn.ReLU(), _deconv(N, N), nn.ReLU(), _conv(N, M, 3, 1), nn.ReLU())
        self.density = FactorizedDensity(N, self.levels)
        self.gaussian = GaussianConditional()

    def forward(self, x: Tensor, level: Tensor | int | None = None) -> dict:
        level = self._level(x, level)
        y = self.analyze(x, level)
        z_scored, z_hat = _relax(self.h_a(y.abs()), self.training)
        y_scored, y_hat = _relax(y, self.training)
        return {"x_hat": self.synthesize(y_hat, level),
                "likelihoods": {"y": self.gaussian(y_scored, self.h_s(z_hat)), "z": self.density(z_scored, level)}}

    def _scale_index(self, z_hat: Tensor) -> Tensor:
        """The table of every y element from the decoded z, with the hyper-synthesis in float64 (see
        the module docstring); the module itself is left as it is."""
        params = {k: v.double() for k, v in self.h_s.state_dict().items()}
        return GaussianConditional.index(torch.func.functional_call(self.h_s, params, (z_hat.double(),)))

    @torch.no_grad()
    def compress(self, x: Tensor, level: int = 0) -> dict:
        from ..ops.entropy import encode
        y = self.analyze(x, self._level(x, level))
        z_hat = torch.round(self.h_a(y.abs()).double())
        pmf_z, lo_z = self.density.tables(level)
        z_data, z_hat = encode(z_hat, torch.arange(self.N).view(1, -1, 1, 1).expand_as(z_hat), pmf_z, lo_z)
        pmf_y, lo_y = GaussianConditional.tables()
        y_data, y_hat = encode(torch.round(y.double()), self._scale_index(z_hat), pmf_y, lo_y)
        return {"z": z_data, "y": y_data, "y_hat": y_hat}

    @torch.no_grad()
    def decompress(self, streams: dict, hw: tuple[int, int], level: int = 0) -> Tensor:
        """{"y", "z": bytes}, y's (h, w) and the level -> pixels [1, C, h * y_stride, w * y_stride]."""
        from ..ops.entropy import decode
        zh, zw = hw[0] // self.hyper_stride, hw[1] // self.hyper_stride
        pmf_z, lo_z = self.density.tables(level)
        z_hat = decode(streams["z"], torch.arange(self.N).view(1, -1, 1, 1).expand(1, self.N, zh, zw), pmf_z, lo_z)
        pmf_y, lo_y = GaussianConditional.tables()
        y_hat = decode(streams["y"], self._scale_index(z_hat), pmf_y, lo_y).float()
        return self.synthesize(y_hat, self._level(y_hat, level))
