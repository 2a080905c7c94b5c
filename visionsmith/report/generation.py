"""The generation task's part of the report: the scores beside their floor (what real images score
against real images), the first 100 samples by requested class, and samples next to their nearest
training image (a near-copy would be memorisation).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from ..outputs.generation import contact_sheet
from .plots import ACCENT, AMBER, INK, MUTED, ROSE, SLATE, STYLE, TEAL, _png, _series, smooth
from .sections import Metric, TaskReport, empty, esc, img, no_eval, register_report, section

if TYPE_CHECKING:
    from .run_folder import RunData

SAMPLES = "eval_samples.npz"
VAL_SAMPLES = "val_samples.npz"

GENERATION = register_report(TaskReport(
    task="generation",
    metrics={"fd": Metric("Frechet classifier distance", "FD", pct=False, digits=4,
                          note="in the features of a Fashion-MNIST classifier; lower is better"),
             "fd_floor": Metric("FD floor (real vs real)", "floor", pct=False, digits=4),
             "precision": Metric("precision (k-NN)", "precision"),
             "recall": Metric("recall (k-NN)", "recall"),
             "class_acc": Metric("samples in the requested class", "requested class"),
             "class_acc_real": Metric("classifier accuracy on real images", "real")},
    files={SAMPLES: "the first 100 samples and nearest training images", VAL_SAMPLES: "samples at every validation"},
    optional=frozenset({SAMPLES, VAL_SAMPLES}),
    curve=("fd", "fd_floor"), curve_legend="upper right", noun="image generator", output="images",
))


def sheet_png(u8: np.ndarray, cols: int, row_labels: list[str] | None = None, cell: float = 0.55,
              left: float = 0.01) -> str:
    """uint8 [n, C, S, S] as one picture of ``cols`` columns without gaps (``contact_sheet``), each row
    named by ``row_labels`` (or none)."""
    sheet = contact_sheet(u8, cols)
    sheet = sheet[0] if sheet.shape[0] == 1 else sheet.transpose(1, 2, 0)
    rows, s = -(-len(u8) // cols), u8.shape[-1]
    with rc_context(STYLE):
        fig = Figure(figsize=(cell * cols + (1.6 if row_labels else 0.2), cell * rows + 0.3))
        ax = fig.add_subplot()
        ax.imshow(sheet, cmap="gray" if sheet.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.grid(False)
        ax.set_yticks([(i + 0.5) * s for i in range(rows)] if row_labels else [], row_labels or [], fontsize=8)
        fig.subplots_adjust(left=left, right=0.99, top=0.99, bottom=0.01)
        return _png(fig)


def sample_sheet(z: dict, classes: list[str]) -> str | None:
    """The samples, one row per requested class when the model is conditional (10 per row)."""
    x = z.get("samples")
    if x is None or not len(x):
        return None
    labels = z.get("labels")
    if labels is None or len(labels) != len(x) or not classes:
        return sheet_png(x, 10, cell=0.62)
    order = np.argsort(labels, kind="stable")  # class 0's samples first, then class 1's...
    x, labels = x[order], labels[order]
    cols = int(np.bincount(labels, minlength=len(classes)).max())
    names = [classes[int(labels[i])] for i in range(0, len(x), cols)]
    return sheet_png(x, cols, names, cell=0.62, left=0.14)


def neighbours(z: dict) -> str | None:
    """Two rows: samples, and under each its nearest training image with the RMS pixel distance."""
    x, nb, d = z.get("samples"), z.get("neighbours"), z.get("neighbour_dist")
    if x is None or nb is None or not len(nb):
        return None
    n = len(nb)
    with rc_context(STYLE):
        fig = Figure(figsize=(1.05 * n, 2.5))
        for i in range(n):
            for row, pic in enumerate((x[i], nb[i])):
                ax = fig.add_subplot(2, n, row * n + i + 1)
                a = pic[0] if pic.shape[0] == 1 else pic.transpose(1, 2, 0)
                ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
                ax.set_xticks([])
                ax.grid(False)
                ax.set_yticks([])
                if row == 1 and d is not None:
                    rms = float(d[i]) / np.sqrt(pic.size)
                    ax.set_xlabel(f"RMS {rms:.2f}", fontsize=7, color=MUTED)
                if i == 0:
                    ax.set_ylabel("sample" if row == 0 else "nearest\ntrain", fontsize=8, color=INK)
        fig.subplots_adjust(wspace=0.08, hspace=0.25, left=0.08, right=0.99, top=0.97, bottom=0.12)
        return _png(fig)


def per_class_bars(ev: dict, classes: list[str]) -> str | None:
    acc = ev.get("class_acc_per_class")
    if not acc or len(acc) != len(classes):
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(6.4, 0.3 * len(acc) + 1.0))
        ax = fig.add_subplot()
        y = np.arange(len(acc))
        ax.barh(y, acc, color=ROSE, height=0.6)
        ax.set_yticks(y, classes, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        real = ev.get("class_acc_real")
        if fmt.is_num(real):
            ax.axvline(real, color=SLATE, ls="--", lw=1, label=f"classifier on real images ({real:.3f})")
            ax.legend(loc="lower left", fontsize=8, frameon=False)
        ax.set_xlabel("share of samples classified as the class asked for", color=MUTED)
        return _png(fig)


@GENERATION.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    ev = data.eval
    rows = [("Frechet classifier distance", ev.get("fd"), "lower is better"),
            ("the same distance, training images vs test images", ev.get("fd_floor"),
             "the floor: what a perfect generator scores with as many images"),
            ("precision (k-NN, k=3)", ev.get("precision"), "share of samples inside the real images' manifold"),
            ("recall (k-NN, k=3)", ev.get("recall"), "share of real images inside the samples' manifold")]
    if ev.get("class_acc") is not None:
        rows += [("samples classified as the requested class", ev.get("class_acc"), "conditional sampling"),
                 ("classifier accuracy on the real test images", ev.get("class_acc_real"), "its ceiling, roughly")]
    table = "<table><tr><th>score</th><th class=num>value</th><th></th></tr>" + "".join(
        f"<tr><td>{esc(a)}</td><td class=num>{esc(fmt.num(v, 4))}</td><td>{esc(c)}</td></tr>" for a, v, c in rows) + "</table>"
    how = [f"{ev.get('n', '?')} samples"]
    if ev.get("sampler"):
        how.append(f"{ev['sampler'].upper()} {ev.get('steps')} steps")
    if ev.get("guidance") is not None:
        how.append(f"guidance {ev['guidance']}")
    classes = list(ev.get("classes") or data.run.get("classes") or [])
    bars = img(per_class_bars(ev, classes), "per class", "") if ev.get("class_acc_per_class") else ""
    body = f'<div class="grid2"><div>{table}<p class="sub">{esc(", ".join(how))}; features: ' \
           f'<code>{esc(str(ev.get("feature_run", "")))}</code></p></div><div>{bars}</div></div>'
    return section("evaluation", "Test evaluation",
                   "Samples and the real test images are compared in the penultimate features of a Fashion-MNIST "
                   "classifier trained by visionsmith (not Inception-v3, so this is not FID and its values are "
                   "not comparable with published FIDs). The floor is the same distance between as many real "
                   "training images and the test images.", body)


@GENERATION.section("samples", "Samples")
def _samples(data: RunData) -> str:
    z = data.arrays.get(SAMPLES, {})
    sheet = sample_sheet(z, list(data.eval.get("classes") or data.run.get("classes") or [])) if z else None
    if sheet is None:
        return section("samples", "Samples", "", empty(f"<code>{SAMPLES}</code> is missing: the test evaluation "
                                                      "writes it (run <code>visionsmith eval RUN</code>)."))
    near = img(neighbours(z), "nearest training images", "")
    w = z.get("walks")
    walk = img(sheet_png(w, 8), "interpolations", "") if w is not None and len(w) else ""
    return section("samples", "Samples",
                   "The first 100 images drawn for the test scores (from the evaluation's fixed noise), one row per "
                   "requested class for a conditional model. Below: samples over their nearest training image in "
                   "pixels; a sample that copies a training image would sit at RMS near 0.",
                   f'<div class="center">{img(sheet, "samples", "")}</div><h3>Nearest training images</h3>{near}'
                   + (f"<h3>Interpolations</h3><p class=sub>Four walks between two random starting points (a VAE's or "
                      f"GAN's latent z, a diffusion model's starting noise with deterministic DDIM); row r asks for class r "
                      f"when the model is conditional.</p>{walk}" if walk else ""))


# the methods' own training scalars, by what they mean: (key, legend, colour, panel)
TERMS = [("loss_d", "discriminator loss", ACCENT, "players"), ("loss_g", "generator loss", ROSE, "players"),
         ("d_real", "D(real)", TEAL, "scores"), ("d_fake", "D(generated)", AMBER, "scores"),
         ("r1", "R1 penalty", SLATE, "scores"),
         ("loss_rec", "reconstruction (per pixel)", ACCENT, "players"), ("loss_kl", "KL (nats per image)", ROSE, "scores"),
         ("bits_per_dim", "bits per dim (bound)", TEAL, "bpd")]
PANELS = {"players": "Losses", "scores": "Discriminator scores / KL", "bpd": "Negative ELBO, bits per dim"}


def terms_plot(train: list[dict]) -> str | None:
    """One panel per group of the method's scalars that the run logged (GAN: both players' losses and the
    critic's scores; VAE: reconstruction, KL and bits per dim), raw faint and smoothed."""
    have = [(k, lbl, c, p) for k, lbl, c, p in TERMS if len(_series(train, "step", k)[0])]
    panels = [p for p in PANELS if any(h[3] == p for h in have)]
    if not panels:
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.0 * len(panels), 3.0))
        for i, p in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for k, lbl, c, q in have:
                if q == p:
                    x, y = _series(train, "step", k)
                    ax.plot(x, y, color=c, alpha=0.2, lw=1)
                    ax.plot(x, smooth(y), color=c, lw=2, label=lbl)
            ax.set_title(PANELS[p])
            ax.set_xlabel("step")
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        return _png(fig)


@GENERATION.section("terms", "Training terms")
def _terms(data: RunData) -> str:
    pic = terms_plot(data.train)
    if pic is None:
        return ""
    return section("terms", "Training terms",
                   "The method's own quantities per logged step (a GAN's two players; a VAE's reconstruction and KL "
                   "terms and its likelihood bound in bits per dimension).", img(pic, "training terms", ""))


def over_training(z: dict, rows: int = 8) -> str | None:
    """One row per validation (at most ``rows``, evenly spaced, the last always): the same starting
    noise drawn by the model as it trained."""
    keys = sorted(z, key=lambda k: float(k[1:]))
    if not keys:
        return None
    pick = sorted({keys[round(i * (len(keys) - 1) / max(1, rows - 1))] for i in range(min(rows, len(keys)))},
                  key=lambda k: float(k[1:]))
    n = min(len(z[k]) for k in pick)
    return sheet_png(np.concatenate([z[k][:n] for k in pick]), n, [f"epoch {k[1:]}" for k in pick], cell=0.5, left=0.1)


@GENERATION.section("progress", "Samples over training")
def _progress(data: RunData) -> str:
    pic = over_training(data.arrays.get(VAL_SAMPLES, {}))
    if pic is None:
        return ""
    return section("progress", "Samples over training",
                   "At every validation the model draws from the same starting noise (the evaluation's seed): each row is "
                   "one epoch, the same 20 requests (two of each class for a conditional model).",
                   f'<div class="center">{img(pic, "samples over training", "")}</div>')

