"""Generative models: a denoising UNet for diffusion (diffusers' ``UNet2DModel`` and its noise
schedulers) and a convolutional VAE.  Both see and produce pixels in [-1, 1], ``[B, C, S, S]``.

Each model knows how to draw images (``sample``), so the task, the ``sample`` command and the
server share one sampler.  Class conditioning: ``num_classes`` > 0 makes a class-conditional model;
the diffusion UNet then has one extra class embedding, index ``num_classes`` = "no class", which
training shows for a share of images (``gen.class_dropout``) so one network also models p(x) and
classifier-free guidance (Ho & Salimans 2022) can mix the two at sampling time.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import UnknownNameError

_GENERATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(name: str):
    def deco(fn):
        _GENERATORS[name] = fn
        return fn
    return deco


def generator_names() -> list[str]:
    return sorted(_GENERATORS)


def create_generator(name: str, **kw) -> nn.Module:
    if name not in _GENERATORS:
        raise UnknownNameError(f"unknown generative model {name!r}; known: {', '.join(generator_names())}")
    return _GENERATORS[name](**kw)


# ---------------------------------------------------------------------------------------------
# Diffusion

def _schedulers(timesteps: int, schedule: str, prediction: str):
    from diffusers import DDIMScheduler, DDPMScheduler
    kw = dict(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2" if schedule == "cosine" else "linear",
              prediction_type="v_prediction" if prediction == "v" else "epsilon", clip_sample=True)
    return DDPMScheduler(**kw), DDIMScheduler(**kw)


class DiffusionUNet(nn.Module):
    """``forward(x_t [B,C,S,S], t int64 [B], y int64 [B] | None) -> [B,C,S,S]``: the noise (epsilon)
    or velocity (v) prediction of diffusers' ``UNet2DModel``.  Without ``t`` (FLOP counting, a plain
    forward) it runs at the middle timestep; without ``y`` a conditional model gets the null class."""

    kind = "diffusion"

    def __init__(self, in_chans: int = 1, image_size: int = 32, num_classes: int = 0,
                 widths=(32, 64, 64), layers_per_block: int = 1, attention: bool = False,
                 timesteps: int = 1000, schedule: str = "linear", prediction: str = "epsilon"):
        super().__init__()
        from diffusers import UNet2DModel
        if image_size % (2 ** (len(widths) - 1)):
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (len(widths) - 1)} "
                             f"for a UNet with {len(widths)} levels")
        down = ["DownBlock2D"] * len(widths)
        up = ["UpBlock2D"] * len(widths)
        if attention:  # self-attention at the coarsest level only (where it is cheap)
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        # The mid block's attention at 4x4 costs 12% of a CPU step for little gain at this size.
        self.unet = UNet2DModel(sample_size=image_size, in_channels=in_chans, out_channels=in_chans,
                                block_out_channels=tuple(widths), layers_per_block=layers_per_block,
                                down_block_types=tuple(down), up_block_types=tuple(up), add_attention=attention,
                                norm_num_groups=min(8, widths[0]), num_class_embeds=num_classes + 1 if num_classes else None)
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.timesteps, self.prediction = timesteps, prediction
        self.train_scheduler, self._ddim = _schedulers(timesteps, schedule, prediction)

    def forward(self, x: Tensor, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        if t is None:
            t = torch.full((x.shape[0],), self.timesteps // 2, dtype=torch.long, device=x.device)
        if self.num_classes and y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=y if self.num_classes else None).sample

    def loss(self, x0: Tensor, y: Tensor | None, class_dropout: float) -> dict:
        """The DDPM training loss on clean ``x0`` in [-1, 1]: a uniform timestep per image, Gaussian
        noise, MSE against epsilon or v.  Randomness: the default generator (seeded by the loop)."""
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (b,), device=x0.device)
        noise = torch.randn_like(x0)
        xt = self.train_scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction == "epsilon" else self.train_scheduler.get_velocity(x0, noise, t)
        if self.num_classes and y is not None and class_dropout > 0:
            drop = torch.rand(b, device=x0.device) < class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        out = self(xt, t, y)
        return {"loss": F.mse_loss(out.float(), target.float())}

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, steps: int = 50, sampler: str = "ddim",
               guidance: float = 1.0, generator: torch.Generator | None = None, noise: Tensor | None = None,
               progress: Callable | None = None) -> Tensor:
        """``n`` images ``[n, C, S, S]`` in [-1, 1].  ``labels`` int64 [n] (conditional models; None: the
        null class, i.e. unconditional).  ``guidance`` w: eps = eps_uncond + w (eps_cond - eps_uncond),
        one doubled batch per step.  ``noise``: the starting x_T (interpolation), else drawn from
        ``generator`` (CPU), so a seed gives the same images on any device.  DDPM ignores ``steps``."""
        device = next(self.parameters()).device
        sched = self._ddim if sampler == "ddim" else self.train_scheduler
        sched.set_timesteps(steps if sampler == "ddim" else self.timesteps)
        shape = (n, self.in_chans, self.image_size, self.image_size)
        x = (noise if noise is not None else torch.randn(shape, generator=generator)).to(device)
        guided = self.num_classes and labels is not None and guidance != 1.0
        null = torch.full((n,), self.num_classes, dtype=torch.long, device=device) if self.num_classes else None
        y = labels.to(device) if labels is not None else null
        for t in (progress(sched.timesteps) if progress else sched.timesteps):
            tt = torch.full((n,), int(t), dtype=torch.long, device=device)
            if guided:
                both = self(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).float()
                cond, unc = both.chunk(2)
                out = unc + guidance * (cond - unc)
            else:
                out = self(x, tt, y).float()
            # DDPM's variance noise comes from the CPU generator too (diffusers draws it on x's device
            # from a CPU generator when given one).  DDIM clips its x0 estimate to [-1, 1] and must then
            # step with the noise that the *clipped* x0 implies (as DDIM's reference code does); diffusers'
            # default keeps the network's own noise, so every step whose x0 is clipped (guidance pushes
            # Fashion-MNIST's black background past -1) adds a mismatch that grows with the step count:
            # 50 guided steps gave Frechet distance 26.5 instead of 4.2 (docs/generation.md).
            extra = {"use_clipped_model_output": True} if sampler == "ddim" else {}
            x = sched.step(out, t, x, generator=generator, **extra).prev_sample
        return x.clamp(-1, 1)


@register_generator("ddpm_unet")
def _ddpm_unet(in_chans=1, image_size=32, num_classes=0, gen=None, **kw):
    return DiffusionUNet(in_chans, image_size, num_classes, timesteps=gen.timesteps, schedule=gen.schedule,
                         prediction=gen.prediction, **kw)


# ---------------------------------------------------------------------------------------------
# VAE

@torch.no_grad()
def from_latent(model: nn.Module, decode: Callable, n: int, labels: Tensor | None,
                generator: torch.Generator | None, noise: Tensor | None) -> Tensor:
    """The VAE's and the GAN's sampler: z ~ N(0, I) ``[n, latent_dim]`` (from the CPU ``generator``, so a
    seed gives the same images on any device; or the given ``noise``) through ``decode(z, labels)``."""
    device = next(model.parameters()).device
    z = (noise if noise is not None else torch.randn(n, model.latent_dim, generator=generator)).to(device)
    if model.num_classes and labels is None:
        raise ValueError(f"a class-conditional {model.kind.upper()} samples a class: pass labels")
    return decode(z, labels.to(device) if labels is not None else None).float().clamp(-1, 1)


class ConvVAE(nn.Module):
    """Encoder: [B,C,S,S] -> 3 stride-2 convs -> (mu, logvar) [B, D]; decoder: z [B, D] (plus a class
    embedding when conditional) -> [B, C, S, S], the mean of a Gaussian decoder in [-1, 1] (tanh).  ``forward(x, y) -> (recon, mu, logvar)``."""

    kind = "vae"

    def __init__(self, in_chans: int = 1, image_size: int = 32, num_classes: int = 0, latent_dim: int = 32,
                 widths=(32, 64, 128)):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"the VAE needs data.image_size divisible by 8, got {image_size}")
        self.num_classes, self.in_chans, self.image_size, self.latent_dim = num_classes, in_chans, image_size, latent_dim
        a, b, c = widths
        self.s0 = image_size // 8
        act = nn.SiLU
        self.enc = nn.Sequential(
            nn.Conv2d(in_chans, a, 3, 2, 1), nn.BatchNorm2d(a), act(),
            nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), act(),
            nn.Conv2d(b, c, 3, 2, 1), nn.BatchNorm2d(c), act(), nn.Flatten())
        emb = 16 if num_classes else 0
        self.embed = nn.Embedding(num_classes, emb) if num_classes else None
        self.to_stats = nn.Linear(c * self.s0 ** 2 + emb, 2 * latent_dim)
        self.from_z = nn.Linear(latent_dim + emb, c * self.s0 ** 2)
        self.dec = nn.Sequential(
            nn.BatchNorm2d(c), act(),
            nn.ConvTranspose2d(c, b, 4, 2, 1), nn.BatchNorm2d(b), act(),
            nn.ConvTranspose2d(b, a, 4, 2, 1), nn.BatchNorm2d(a), act(),
            nn.ConvTranspose2d(a, in_chans, 4, 2, 1), nn.Tanh())
        self._c = c

    def _cond(self, h: Tensor, y: Tensor | None) -> Tensor:
        if self.embed is None:
            return h
        if y is None:
            raise ValueError("a class-conditional VAE needs class labels")
        return torch.cat([h, self.embed(y)], 1)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self._cond(self.enc(x), y)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.from_z(self._cond(z, y)).view(-1, self._c, self.s0, self.s0)
        return self.dec(h)

    def forward(self, x: Tensor, y: Tensor | None = None):
        if self.num_classes and y is None:
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z, y), mu, logvar

    def loss(self, x: Tensor, y: Tensor | None, beta: float) -> dict:
        """Negative ELBO per image with a fixed-variance Gaussian decoder (sigma = 0.1 in [-1, 1] units):
        rec = ||x - x_hat||^2 / (2 sigma^2), kl = KL(q(z|x) || N(0, I)); the loss is their mean per
        pixel (rec + beta * kl) / (C S S) so the learning rate does not depend on the image size.
        ``bits_per_dim``: the Gaussian NLL bound of 8-bit pixels in bits per sub-pixel."""
        recon, mu, logvar = self(x, y)
        d = x[0].numel()
        sigma = 0.1
        rec = (recon.float() - x).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)
        kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).sum(1)
        # -log p(x|z) of the continuous Gaussian; an 8-bit bin is 2/255 wide in [-1, 1] units, so the
        # discrete probability is about density x 2/255: + log2(127.5) bits per sub-pixel
        nll = rec + d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        bpd = (nll + kl).mean() / (d * math.log(2)) + math.log2(127.5)
        return {"loss": (rec + beta * kl).mean() / d, "loss_rec": rec.mean().detach() / d,
                "loss_kl": kl.mean().detach(), "bits_per_dim": bpd.detach()}

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, **_) -> Tensor:
        """``n`` images [n, C, S, S] in [-1, 1]: z ~ N(0, I) through the decoder."""
        return from_latent(self, self.decode, n, labels, generator, noise)


@register_generator("conv_vae")
def _conv_vae(in_chans=1, image_size=32, num_classes=0, gen=None, **kw):
    return ConvVAE(in_chans, image_size, num_classes, latent_dim=gen.latent_dim, **kw)


# ---------------------------------------------------------------------------------------------
# GAN

class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al. 2016): z [B, D] (+ a class embedding when conditional) -> Linear
    -> [B, 4w, S/8, S/8] -> three stride-2 transposed convs with BN + ReLU -> tanh [B, C, S, S]."""

    kind = "gan"

    def __init__(self, in_chans: int = 1, image_size: int = 32, num_classes: int = 0, latent_dim: int = 64,
                 width: int = 64):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"the DCGAN generator needs data.image_size divisible by 8, got {image_size}")
        self.num_classes, self.in_chans, self.image_size, self.latent_dim = num_classes, in_chans, image_size, latent_dim
        self.s0, w = image_size // 8, width
        emb = 16 if num_classes else 0
        self.embed = nn.Embedding(num_classes, emb) if num_classes else None
        self.fc = nn.Sequential(nn.Linear(latent_dim + emb, 4 * w * self.s0 ** 2, bias=False),
                                nn.BatchNorm1d(4 * w * self.s0 ** 2), nn.ReLU(True))
        up = lambda a, b: [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]  # noqa: E731
        self.net = nn.Sequential(*up(4 * w, 2 * w), *up(2 * w, w), *up(w, w // 2),
                                 nn.Conv2d(w // 2, in_chans, 3, 1, 1), nn.Tanh())
        self._w = w

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("a class-conditional generator needs class labels")
            z = torch.cat([z, self.embed(y)], 1)
        return self.net(self.fc(z).view(-1, 4 * self._w, self.s0, self.s0))

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, **_) -> Tensor:
        """``n`` images [n, C, S, S] in [-1, 1]: z ~ N(0, I) through the generator."""
        return from_latent(self, self.forward, n, labels, generator, noise)


class ProjectionDiscriminator(nn.Module):
    """Spectrally normalised DCGAN critic (Miyato et al. 2018): [B, C, S, S] -> three 4x4 stride-2 convs
    (w, 2w, 4w channels) and a 3x3 conv, LeakyReLU(0.1) -> global sum pool phi [B, 4w] -> score [B] =
    linear(phi), plus <embed(y), phi> when conditional (the projection discriminator, Miyato & Koyama
    2018).  No full-resolution 3x3 convs: on CPU they tripled the step time for this image size."""

    def __init__(self, in_chans: int = 1, num_classes: int = 0, width: int = 64):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        act = lambda: nn.LeakyReLU(0.1, True)  # noqa: E731
        w = width
        self.features = nn.Sequential(sn(nn.Conv2d(in_chans, w, 4, 2, 1)), act(), sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), act(),
                                      sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), act(), sn(nn.Conv2d(4 * w, 4 * w, 3, 1, 1)), act())
        self.out = sn(nn.Linear(4 * w, 1))
        self.embed = sn(nn.Embedding(num_classes, 4 * w)) if num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        phi = self.features(x).sum(dim=(2, 3))
        score = self.out(phi).squeeze(1)
        if self.embed is not None and y is not None:
            score = score + (self.embed(y) * phi).sum(1)
        return score


@register_generator("dcgan")
def _dcgan(in_chans=1, image_size=32, num_classes=0, gen=None, **kw):
    return DCGANGenerator(in_chans, image_size, num_classes, latent_dim=gen.latent_dim, **kw)


# ---------------------------------------------------------------------------------------------
# Interpolation (the `interpolate` command and the report)

def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of two Gaussian draws [D] at fractions ``t`` [n] -> [n, D]: the path keeps
    the norm a Gaussian sample has (a straight line through the middle would shrink it)."""
    an, bn = a / a.norm(), b / b.norm()
    omega = torch.arccos((an * bn).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return torch.lerp(a[None], b[None], t[:, None])
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a[None] + (torch.sin(t * omega) / so)[:, None] * b[None]


@torch.no_grad()
def walks(model: nn.Module, n: int, rows: int, classes: list[int] | None, steps: int, guidance: float,
          seed: int) -> tuple[Tensor, list[int] | None]:
    """``rows`` walks of ``n`` images (uint8 ``[rows * n, C, S, S]``), each between two random starting
    points: the latent z of a VAE or GAN, the starting noise x_T of a diffusion model (deterministic DDIM,
    so nearby noise gives nearby images).  ``classes``: the class of each row (conditional models)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (model.in_chans, model.image_size, model.image_size) if model.kind == "diffusion" else (model.latent_dim,)
    t = torch.linspace(0, 1, n)
    strips = []
    for r in range(rows):
        a, b = torch.randn(shape, generator=gen).flatten(), torch.randn(shape, generator=gen).flatten()
        y = torch.full((n,), classes[r], dtype=torch.long) if classes is not None else None
        x = model.sample(n, y, steps=steps, sampler="ddim", guidance=guidance if y is not None else 1.0,
                         noise=slerp(a, b, t).view(n, *shape))
        strips.append(((x.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(strips), classes
