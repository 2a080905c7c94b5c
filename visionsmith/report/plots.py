"""The report's plots, each returned as a base64 PNG string for an inline ``<img>``.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas, never
through pyplot: no global figure state, no GUI backend, safe to call from a server thread.
Every function returns ``None`` when it has nothing to draw, so the caller can say why.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

# One palette for the page and the plots (the CSS in html.py uses the same hex values).
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
ACCENT = "#4f46e5"  # this run / train
TEAL = "#0d9488"  # validation
AMBER = "#d97706"
ROSE = "#e11d48"
SLATE = "#94a3b8"

# PNGs are drawn at 1.5x the CSS pixel density (crisp on high-DPI screens) and shown at
# ``css_width`` so that a 9 pt label in a plot is as large as 12 px text in the page.
DPI = 144
CSS_DPI = 96

STYLE = {
    "font.size": 9,
    "axes.edgecolor": GRID,
    "axes.labelcolor": INK,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlecolor": INK,
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}

_BLUES = LinearSegmentedColormap.from_list("vs_blues", ["#f8fafc", "#c7d2fe", ACCENT, "#1e1b4b"])


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: no backend lookup, no pyplot
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def css_width(b64: str) -> int:
    """The CSS width to show a PNG from ``_png`` at: its pixel width scaled from DPI to 96 dpi."""
    import struct

    width = struct.unpack(">I", base64.b64decode(b64[:32])[16:20])[0]  # PNG IHDR width field
    return round(width * CSS_DPI / DPI)


def _series(rows: list[dict], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Numeric (x, y) pairs from metric rows, skipping rows where either is absent or not a number."""
    pts = [(r.get(x), r.get(y)) for r in rows]
    pts = [(a, b) for a, b in pts if _num(a) and _num(b)]
    if not pts:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pts, dtype=float)
    return arr[:, 0], arr[:, 1]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def smooth(y: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard draws it).

    The weight grows with the number of points so that 30 points and 3,000 points both give a
    readable trend line; debiasing keeps the first points from being pulled toward zero.
    """
    if len(y) == 0:
        return y
    if weight is None:
        weight = float(np.clip(1 - 8 / len(y), 0.0, 0.95))
    out, acc = np.empty_like(y, dtype=float), 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1)) if weight > 0 else v
    return out


def loss_curve(train: list[dict], val: list[dict]) -> str | None:
    """Train loss per step (raw, faint + smoothed) with the validation loss per epoch."""
    xs, ys = _series(train, "step", "loss")
    vx, vy = _series(val, "step", "loss")
    if not len(xs) and not len(vx):
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 3.1))
        ax = fig.add_subplot()
        if len(xs):
            ax.plot(xs, ys, color=ACCENT, alpha=0.22, lw=1, label="_raw")
            ax.plot(xs, smooth(ys), color=ACCENT, lw=2, label="train (smoothed)")
        if len(vx):
            ax.plot(vx, vy, color=TEAL, lw=2, marker="o", ms=5, label="val")
        ax.set_title("Loss")
        ax.set_xlabel("step")
        ax.legend(loc="upper right")
        return _png(fig)


CURVE_COLORS = [TEAL, ACCENT, ROSE, AMBER, SLATE]
CLASSIFICATION_CURVE = [("acc", "accuracy"), ("macro_f1", "macro-F1"), ("robust_acc", "robust accuracy (PGD)")]


def val_curve(val: list[dict], title: str = "Validation metrics per epoch",
              series: Sequence[tuple[str, str]] | None = None, best: str = "max",
              legend: str = "lower right") -> str | None:
    """Validation metrics per epoch: ``series`` is ``[(key, legend label)]``, coloured in order, the
    first one (the task's headline) labelled at its best epoch (``best``: "max" or "min").  Default:
    classification's accuracy, macro-F1 and robust accuracy (top-5 is in the table under the plots)."""
    wanted = list(series or CLASSIFICATION_CURVE)
    series = [(k, c, lbl) for (k, lbl), c in zip(wanted, CURVE_COLORS * 3) if len(_series(val, "epoch", k)[0])]
    if not series:
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 3.1))
        ax = fig.add_subplot()
        for key, color, label in series:
            x, y = _series(val, "epoch", key)
            ax.plot(x, y, color=color, lw=2, marker="o", ms=5, label=label)
        key, color, _ = series[0]
        x, y = _series(val, "epoch", key)
        if key == wanted[0][0]:  # label the best epoch: the number a reader looks for first
            i = int(np.argmin(y) if best == "min" else np.argmax(y))
            ax.annotate(f"{y[i]:.3f}", (x[i], y[i]), textcoords="offset points", xytext=(0, 8),
                        ha="center", color=color, fontweight="bold")
        ax.margins(y=0.15)  # room above the best-epoch label
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc=legend)
        return _png(fig)


def lr_curve(train: list[dict]) -> str | None:
    """Learning rate per step (the schedule as it actually ran)."""
    x, y = _series(train, "step", "lr")
    if not len(x):
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 3.1))
        ax = fig.add_subplot()
        ax.plot(x, y, color=AMBER, lw=2)
        ax.fill_between(x, y, color=AMBER, alpha=0.08)
        ax.set_title("Learning rate")
        ax.set_xlabel("step")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        return _png(fig)


def throughput_curve(train: list[dict]) -> str | None:
    """Training images per second over wall-clock time since the first logged line."""
    x, y = _series(train, "time", "img_per_s")
    xlabel = "seconds since first log line"
    if len(x):
        x = x - x[0]  # "time" may be a unix timestamp or seconds since start: both work
    else:
        x, y = _series(train, "step", "img_per_s")
        xlabel = "step"
    if not len(x):
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 3.1))
        ax = fig.add_subplot()
        ax.plot(x, y, color=ROSE, lw=1.5, alpha=0.9)
        ax.axhline(float(np.median(y)), color=MUTED, lw=1, ls="--", label=f"median {np.median(y):,.0f} img/s")
        ax.set_ylim(bottom=0, top=float(np.max(y)) * 1.25)  # headroom for the legend
        if np.max(y) >= 10_000:  # one unit for every tick: 5k, 10k, 15k rather than 5,000, 10k
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k" if v else "0"))
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.legend(loc="upper left")
        ax.set_title("Training throughput (img/s)")
        ax.set_xlabel(xlabel)
        return _png(fig)


def confusion(cm: Sequence[Sequence[int]], classes: list[str], text: str = "count",
              title: str = "Confusion matrix (test; colour = share of the true class)") -> str | None:
    """Heatmap of the confusion matrix: colour = row-normalised rate, text = raw count (``text="rate"``:
    the rate as a percentage, for pixel counts too long to read)."""
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        return None
    k = cm.shape[0]
    names = classes if len(classes) == k else [str(i) for i in range(k)]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # rows = true class
    side = min(max(3.6, 0.4 * k + 1.3), 12)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(side + 0.8, side))
        ax = fig.add_subplot()
        im = ax.imshow(rates, cmap=_BLUES, vmin=0, vmax=1)
        if k <= 30:  # beyond that the numbers are unreadable; the colour still tells the story
            fs = 8 if k <= 12 else 6
            for i in range(k):
                for j in range(k):
                    if cm[i, j] and (text == "count" or rates[i, j] >= 0.005):
                        label = f"{int(cm[i, j])}" if text == "count" else f"{100 * rates[i, j]:.0f}"
                        ax.text(j, i, label, ha="center", va="center", fontsize=fs,
                                color="white" if rates[i, j] > 0.5 else INK)
        ax.set_xticks(range(k), names, rotation=45, ha="right")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(title)
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.outline.set_visible(False)
        return _png(fig)


def per_class_bars(per_class: dict, classes: list[str]) -> str | None:
    """Grouped bars of precision and recall per class (test split)."""
    p, r = per_class.get("precision") or [], per_class.get("recall") or []
    if not p or len(p) != len(r):
        return None
    k = len(p)
    names = classes if len(classes) == k else [str(i) for i in range(k)]
    x = np.arange(k)
    with rc_context(STYLE):
        fig = Figure(figsize=(min(max(5.2, 0.45 * k + 1.2), 11), 3.4))
        ax = fig.add_subplot()
        ax.bar(x - 0.2, p, 0.4, color=ACCENT, label="precision")
        ax.bar(x + 0.2, r, 0.4, color=TEAL, label="recall")
        ax.set_xticks(x, names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center")
        ax.set_ylim(0, 1.08)
        ax.grid(axis="x", visible=False)
        ax.legend(loc="lower left", ncols=2, bbox_to_anchor=(0, 1.0), bbox_transform=ax.transAxes)
        ax.set_title("Precision and recall per class (test)", pad=22)
        return _png(fig)


def _to_hwc(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] uint8 -> something ``imshow`` takes, and the colormap to use."""
    img = np.asarray(img)
    if img.dtype != np.uint8:  # tolerate float images in [0, 1] or [0, 255]
        img = img.astype(float)
        img = np.clip(img * (255 if img.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[0] == 1:
        return img[0], "gray"
    if img.ndim == 3 and img.shape[0] == 3:
        return img.transpose(1, 2, 0), None
    if img.ndim == 2:
        return img, "gray"
    return img, None


def crop_grid(cells: list[list[np.ndarray]], titles: list[list[str | None]], row_labels: Sequence[str],
              size: float = 1.95) -> str:
    """Image crops in a table, one row per image: ``cells[i][j]`` uint8 [C, H, W], ``titles[i][j]`` above it
    (None: none), ``row_labels[i]`` on the left; pixels shown as they are (no interpolation)."""
    n, k = len(cells), len(cells[0])
    every_row = any(t for row in titles[1:] for t in row)  # titles under row 0 too: smaller, with room
    with rc_context(STYLE):
        fig = Figure(figsize=(size * k, size * n + 0.3))
        for i in range(n):
            for j in range(k):
                ax = fig.add_subplot(n, k, i * k + j + 1)
                im, cmap = _to_hwc(cells[i][j])
                ax.imshow(im, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if titles[i][j]:
                    ax.set_title(titles[i][j], fontsize=8 if every_row else 9)
                if j == 0:
                    ax.set_ylabel(row_labels[i], fontsize=8)
        fig.subplots_adjust(wspace=0.04, hspace=0.2 if every_row else 0.08)
        return _png(fig)


def mistakes_grid(images: np.ndarray, labels: Sequence[int], preds: Sequence[int],
                  confidence: Sequence[float], classes: list[str], cols: int = 8) -> str | None:
    """A grid of the most confident mistakes, titled ``true -> pred (conf)``."""
    n = min(len(images), len(labels), len(preds), len(confidence))
    if n == 0:
        return None

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    cols = min(cols, n)
    rows = math.ceil(n / cols)
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(1.5 * cols, 1.85 * rows))
        for idx in range(n):
            ax = fig.add_subplot(rows, cols, idx + 1)
            img, cmap = _to_hwc(images[idx])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            # Three short lines rather than one long one: class names like "T-shirt/top" would
            # run into the neighbouring title.
            ax.set_title(f"{name(int(labels[idx]))}\n\u2192 {name(int(preds[idx]))}", fontsize=8,
                         loc="center", fontweight="normal", color=INK, linespacing=1.3)
            ax.set_xlabel(f"{float(confidence[idx]):.2f}", fontsize=8, color=ROSE, labelpad=2)
        fig.subplots_adjust(hspace=0.55, wspace=0.12)
        return _png(fig)


def published_bars(rows: list[dict], acc: float, ours: str = "this run") -> str | None:
    """Horizontal bars of published accuracies with this run highlighted."""
    entries = [(str(r.get("name", "?")), float(r["acc"]), False) for r in rows if _num(r.get("acc"))]
    if not entries:
        return None
    entries.append((ours, float(acc), True))
    entries.sort(key=lambda e: e[1])
    n = len(entries)
    lo = min(e[1] for e in entries)
    with rc_context(STYLE):
        fig = Figure(figsize=(7.4, 0.26 * n + 0.9))
        ax = fig.add_subplot()
        y = np.arange(n)
        colors = [ACCENT if e[2] else "#cbd5e1" for e in entries]
        ax.barh(y, [e[1] for e in entries], color=colors, height=0.7)
        for i, (label, a, is_ours) in enumerate(entries):
            ax.text(a + 0.002, i, f"{a:.3f}", va="center", fontsize=8,
                    color=ACCENT if is_ours else MUTED, fontweight="bold" if is_ours else "normal")
        ax.set_yticks(y, [e[0] for e in entries])
        for tick, e in zip(ax.get_yticklabels(), entries):
            if e[2]:
                tick.set_color(ACCENT)
                tick.set_fontweight("bold")
        # Zoom the axis onto the range that differs; accuracies cluster near the top.
        ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(e[1] for e in entries) + 0.03))
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel("test accuracy")
        ax.set_title("This run among published results")
        return _png(fig)
