"""Generative training methods: each asks its model for its own loss on [-1, 1] pixels.

``diffusion``: the DDPM objective (Ho et al. 2020) on diffusers' schedule, epsilon or v target;
``vae``: the negative ELBO (Kingma & Welling 2014), beta-weighted KL (Higgins et al. 2017);
``gan``: a DCGAN generator against a spectrally normalised projection discriminator, hinge or
non-saturating loss, optional R1 penalty, in two phases with their own optimizers.
All randomness (timesteps, noise, the reparameterisation, z) comes from the default generator, which
the loop seeds from (seed, step): resume stays bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_method


class Generative(nn.Module):
    """``forward({'image': [B,C,S,S] in [0,1], 'label': int64 [B]}) -> {'loss', ...}``."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.model = model
        self.gen = cfg.gen

    def forward(self, batch: dict) -> dict:
        x = batch["image"] * 2 - 1  # [0, 1] -> [-1, 1]
        y = batch.get("label") if self.gen.conditional else None
        if self.model.kind == "diffusion":
            return self.model.loss(x, y, self.gen.class_dropout)
        return self.model.loss(x, y, self.gen.beta)


@register_method("diffusion", labels=False, tasks=("generation",))
def build_diffusion(cfg, model, task, teacher=None):
    """Denoising diffusion (DDPM objective; DDPM or DDIM sampling; classifier-free guidance)."""
    return Generative(model, cfg)


@register_method("vae", labels=False, tasks=("generation",))
def build_vae(cfg, model, task, teacher=None):
    """Variational autoencoder (negative ELBO, beta-VAE option)."""
    return Generative(model, cfg)


class GAN(nn.Module):
    """Two phases a step, each with its own optimizer (``phases``, ``phase_optim``: read by the loop):
    ``d``: the discriminator on real images and detached samples (+ R1 on real images);
    ``g``: the generator through the discriminator.  ``self.model`` is the generator (the checkpoint's
    weights, EMA-averaged); the discriminator is this method's own state (saved beside the optimizers)."""

    phases = ("d", "g")

    def __init__(self, model: nn.Module, cfg, num_classes: int):
        super().__init__()
        from ..models.generators import ProjectionDiscriminator
        self.model = model
        self.gen = cfg.gen
        self.disc = ProjectionDiscriminator(model.in_chans, num_classes if cfg.gen.conditional else 0,
                                            cfg.model.kwargs.get("width", 64))

    def phase_optim(self, phase: str) -> dict:
        """What ``build_optimizer`` needs for a phase: its parameters, learning-rate scale, Adam betas."""
        prefix = "disc." if phase == "d" else "model."
        return {"only": lambda name: name.startswith(prefix), "betas": tuple(self.gen.betas),
                "lr_scale": self.gen.d_lr_scale if phase == "d" else 1.0}

    def forward(self, batch: dict, phase: str = "g") -> dict:
        x = batch["image"] * 2 - 1  # [B, C, S, S] in [-1, 1]
        y = batch.get("label") if self.gen.conditional else None
        z = torch.randn(x.shape[0], self.model.latent_dim, device=x.device)
        fake = self.model(z, y)  # the real batch's classes: the generated classes follow the data's
        hinge = self.gen.gan_loss == "hinge"
        if phase == "d":
            x = x.detach().requires_grad_(self.gen.r1 > 0)
            d_real, d_fake = self.disc(x, y).float(), self.disc(fake.detach(), y).float()
            if hinge:
                loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            else:
                loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            out = {"loss_d": loss.detach(), "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
            if self.gen.r1 > 0:  # R1 (Mescheder et al. 2018): the gradient norm on real images
                (g,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
                r1 = g.float().pow(2).flatten(1).sum(1).mean()
                loss = loss + 0.5 * self.gen.r1 * r1
                out["r1"] = r1.detach()
            return {"loss": loss, **out}
        d_fake = self.disc(fake, y).float()
        loss = -d_fake.mean() if hinge else F.softplus(-d_fake).mean()
        return {"loss": loss, "loss_g": loss.detach()}


@register_method("gan", labels=False, tasks=("generation",))
def build_gan(cfg, model, task, teacher=None):
    """Generative adversarial network (DCGAN generator, spectral-norm projection discriminator)."""
    return GAN(model, cfg, model.num_classes)
