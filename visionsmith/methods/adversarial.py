"""Adversarial attacks in pixel space and adversarial training.

Every attack takes a model of **[0, 1] pixels** (any visionsmith model: it normalises its input
itself with ``pixel_norm``; or any callable ``pixels [B, C, H, W] -> logits [B, K]``) and pixels in
[0, 1], so ``eps`` is a budget in the units users think in (8/255 means 8 grey levels), whatever
normalisation the model was trained with.  Adversarial images never leave the eps ball around the
input nor the [0, 1] box.

Attacks: FGSM (Goodfellow et al., 2015), PGD with random start (Madry et al., 2018), L-inf or L2.
Training methods (``method: adversarial``, ``adversarial.kind``):
  - ``pgd``: PGD-AT, Madry et al. 2018 (arXiv:1706.06083): train on PGD examples only.
  - ``fgsm``: FGSM with random start and step 1.25 eps, Wong, Rice & Kolter 2020 ("Fast is better
    than free", arXiv:2001.03994): one gradient step per batch instead of ``steps``.
  - ``trades``: Zhang et al. 2019 (arXiv:1901.08573): CE on clean images + beta * KL(clean || adv),
    the inner maximisation on that KL.

Why not torchattacks or ART: torchattacks assumes the model takes [0, 1] inputs (visionsmith models
do: their normalisation is inside them, see ``models/_base.py``), ART wraps models in its own
estimator classes; PGD itself is twenty lines.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import AdversarialConfig
from ..errors import UserError
from .registry import register_method

PixelFn = Callable[[torch.Tensor], torch.Tensor]  # pixels [B, C, H, W] in [0, 1] -> logits [B, K]


def check_eps(eps: float, what: str = "eps") -> float:
    """``eps`` as a float in [0, 1] (pixel units), or a ValueError that says so."""
    eps = float(eps)
    if not 0.0 <= eps <= 1.0:
        raise UserError(f"{what}={eps:g} is outside [0, 1]: attacks work on [0, 1] pixels, so eps is a fraction "
                         "of the pixel range (8/255 = 0.0314 is 8 grey levels)")
    return eps


def _norms(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms of ``v`` [B, ...], shaped [B, 1, 1, 1] for broadcasting."""
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x_adv`` pulled back into the ``norm`` ball of radius ``eps`` around ``x``, then into [0, 1].
    (Clamping to the box after the ball only shrinks the perturbation, so both hold.)"""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _norms(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a random direction at a uniform radius in the L2 ball."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        d = torch.randn_like(x)
        delta = d / _norms(d) * eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
    return (x + delta).clamp(0.0, 1.0)


def _ascent(grad: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    """The steepest-ascent step of size ``step`` for the norm: sign for L-inf, unit direction for L2."""
    return step * (grad.sign() if norm == "linf" else grad / _norms(grad))


def pgd(model: PixelFn, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True,
        loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Projected gradient ascent on the loss within the eps ball.  ``x`` [B, C, H, W] in [0, 1],
    ``y`` [B] labels; returns detached adversarial pixels of the same shape.

    ``step_size`` defaults to 2.5 * eps / steps (Madry et al.: enough to cross the ball and come
    back).  ``loss_fn(logits)`` replaces the summed cross-entropy (TRADES uses a KL).  The model's
    parameters get no gradient: only the input's gradient is taken.
    """
    if norm not in ("linf", "l2"):
        raise UserError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps == 0 or steps == 0:
        return x.detach()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    loss_fn = loss_fn or (lambda logits: F.cross_entropy(logits.float(), y, reduction="sum"))
    x = x.detach()
    x_adv = _random_start(x, eps, norm) if random_start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(model(x_adv)), x_adv)
        x_adv = project(x_adv.detach() + _ascent(grad, step_size, norm), x, eps, norm)
    return x_adv.detach()


def fgsm(model: PixelFn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
         random_start: bool = False, step_size: float | None = None) -> torch.Tensor:
    """One gradient step: plain FGSM (step eps from the input), or with ``random_start`` the
    fast-AT variant (uniform start, step 1.25 eps, projected back; Wong et al. 2020)."""
    if step_size is None:
        step_size = 1.25 * eps if random_start else eps
    return pgd(model, x, y, eps, steps=1, step_size=step_size, norm=norm, random_start=random_start)


def attack(name: str, model: PixelFn, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
           steps: int = 20, step_size: float | None = None) -> torch.Tensor:
    """The attack named on the command line: ``fgsm`` or ``pgd`` (random start)."""
    if name == "fgsm":
        return fgsm(model, x, y, eps, norm)
    if name == "pgd":
        return pgd(model, x, y, eps, steps, step_size, norm)
    raise UserError(f"unknown attack {name!r}: choose fgsm or pgd")


class AdversarialTraining(nn.Module):
    """``forward({'image' [B, C, S, S] pixels, 'label' [B]}) -> {'loss', 'output', 'loss_*'}``.

    Batches arrive as [0, 1] pixels (the loop's transform) and are attacked as they are: the model
    normalises its input itself, so ``eps`` is a pixel budget.  The attack runs with the model in
    its current (training) mode, as the reference implementations do, so batch-norm sees the same
    statistics as the update.
    Random starts draw from the global generator, which the loop re-seeds every step: resume is
    exact.  ``evaluate`` adds PGD robust accuracy on part of the validation set to each epoch's row.
    """

    def __init__(self, model: nn.Module, cfg: AdversarialConfig, task):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.task = task

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.cfg
        x = batch["image"]  # [B, C, S, S] pixels in [0, 1]
        y = batch["label"]
        f = self.model
        if c.kind == "trades":
            return self._trades(f, x, y)
        if c.kind == "fgsm":
            x_adv = fgsm(f, x, y, c.eps, c.norm, random_start=True, step_size=c.step_size)
        else:
            x_adv = pgd(f, x, y, c.eps, c.steps, c.step_size, c.norm)
        logits = f(x_adv)
        loss = self.task.loss(logits.float(), y)
        return {"loss": loss, "output": logits}

    def _trades(self, f: PixelFn, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.cfg
        with torch.no_grad():
            p_clean = F.softmax(f(x).float(), -1)
        # Inner max of KL(clean || adv) from a tiny Gaussian start (Zhang et al.'s 0.001 * N(0, 1)).
        kl_sum = lambda logits: F.kl_div(F.log_softmax(logits.float(), -1), p_clean, reduction="sum")  # noqa: E731
        start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        x_adv = start
        step = 2.5 * c.eps / c.steps if c.step_size is None else c.step_size
        for _ in range(c.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            grad, = torch.autograd.grad(kl_sum(f(x_adv)), x_adv)
            x_adv = project(x_adv.detach() + _ascent(grad, step, c.norm), x, c.eps, c.norm)
        logits = f(x)
        nat = self.task.loss(logits.float(), y)
        rob = F.kl_div(F.log_softmax(f(x_adv.detach()).float(), -1), F.softmax(logits.float(), -1),
                       reduction="batchmean")
        return {"loss": nat + c.trades_beta * rob, "output": logits, "loss_nat": nat.detach(),
                "loss_rob": rob.detach()}

    def evaluate(self, model: nn.Module, train_ds, val_ds, eval_tf, batch_size: int, device: torch.device) -> dict:
        """The val row of an epoch: clean ``acc``/``top5``/``macro_f1``/``loss`` on the whole split,
        and ``robust_acc``: PGD (``eval_steps`` steps, the training eps and norm) on its first
        ``eval_images`` images, so early stopping can watch robustness (robust overfitting,
        Rice et al. 2020, makes the last epoch rarely the most robust)."""
        c = self.cfg
        logits, rob_correct, n_rob = [], 0, min(c.eval_images, len(val_ds))
        was_training = model.training
        model.eval()
        for i in range(0, len(val_ds), batch_size):
            x = eval_tf(val_ds.images[i:i + batch_size]).to(device)  # [0, 1] pixels
            with torch.no_grad():
                logits.append(model(x).float().cpu())
            if i < n_rob:
                p = x[: n_rob - i]
                y = val_ds.labels[i:i + len(p)].to(device)
                with torch.enable_grad():
                    x_adv = pgd(model, p, y, c.eps, c.eval_steps, None, c.norm)
                with torch.no_grad():
                    rob_correct += int((model(x_adv).argmax(-1) == y).sum())
        model.train(was_training)
        m = self.task.score(torch.cat(logits), val_ds.labels, val_ds.classes)
        out = {k: m[k] for k in self.task.val_keys}
        out["robust_acc"] = rob_correct / max(n_rob, 1)
        return out


@register_method("adversarial")
def build(cfg, model, task, teacher=None):
    """Adversarial training (PGD-AT, fast FGSM, TRADES) in pixel space."""
    return AdversarialTraining(model, cfg.adversarial, task)
