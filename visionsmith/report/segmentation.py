"""The segmentation task's part of the report: the test evaluation (mIoU and friends, per-class IoU
bars, the pixel confusion matrix normalised by true class) and a prediction grid (test images with
their true and predicted masks overlaid, from ``eval_samples.npz``).

Class colours are one fixed palette shared by the grid, its legend, the IoU bars and the per-class
table; the background class (class 0 named "background") is left uncoloured, and pixels no metric
counts (255 in a mask) are hatched grey.
"""
from __future__ import annotations

import colorsys
import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from . import fmt, plots
from .plots import GRID, INK, MUTED, ROSE, SLATE, STYLE, _png, _to_hwc
from .sections import (
    Metric,
    TaskReport,
    confused_pairs,
    empty,
    esc,
    img,
    kv,
    no_eval,
    register_report,
    section,
)

if TYPE_CHECKING:
    from .run_folder import RunData

IGNORE = 255  # a mask value no loss or metric counts (data/transforms.py IGNORE)
SAMPLES = "eval_samples.npz"
BACKGROUND_NAMES = {"background", "_background_", "bg", "__background__"}

# Distinct colours for classes (Trubetskoy's "20 distinct colours", grey and white left out so that
# they never look like the hatched grey of unscored pixels); more classes get golden-ratio hues.
PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
           "#808000", "#ffd8b1", "#000075"]
ALPHA = 0.55  # how strongly a class colour covers the image inside its region (its outline is solid)


def background_index(classes: list[str]) -> int | None:
    """The class drawn without colour: class 0 when it is named like a background, else none."""
    return 0 if classes and str(classes[0]).strip().lower() in BACKGROUND_NAMES else None


def class_colors(k: int, bg: int | None) -> list[str]:
    """``k`` hex colours, one per class; the background class gets a neutral slate (bars, table)."""
    out, j = [], 0
    for i in range(k):
        if i == bg:
            out.append(SLATE)
            continue
        if j < len(PALETTE):
            out.append(PALETTE[j])
        else:
            r, g, b = colorsys.hsv_to_rgb((j * 0.618034) % 1.0, 0.75, 0.9)
            out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
        j += 1
    return out


def _rgb(hex_colors: list[str]) -> np.ndarray:
    return np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in hex_colors], dtype=float)


# ---------------------------------------------------------------------------------------------
# pictures


def _resize_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """A class map at ``h x w`` (nearest: class ids never blend)."""
    mh, mw = mask.shape
    if (mh, mw) == (h, w):
        return mask
    return mask[(np.arange(h) * mh // h)[:, None], (np.arange(w) * mw // w)[None, :]]


def _image_rgb(image: np.ndarray | None, h: int, w: int) -> np.ndarray:
    """The sample as float RGB ``[h, w, 3]`` in [0, 1] (grey images repeated; none: a dark canvas)."""
    if image is None:
        return np.full((h, w, 3), 0.15)
    arr, _ = _to_hwc(image)
    arr = np.asarray(arr, dtype=float) / 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[-1] != 3:
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return arr


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, bg: int | None) -> np.ndarray:
    """``image`` (float RGB [H, W, 3]) with ``mask`` ([H, W] class ids) painted on: each class in its
    colour with a solid outline, the background left as it is, unscored pixels hatched grey."""
    out = image.copy()
    k = len(colors)
    m = mask.astype(np.int64)
    known = (m != IGNORE) & (m < k)
    painted = known & ((m != bg) if bg is not None else True)
    if painted.any():
        c = colors[np.where(painted, m, 0)]
        out[painted] = (1 - ALPHA) * out[painted] + ALPHA * c[painted]
        # Outline: a painted pixel whose right or lower neighbour has another class (and that neighbour).
        edge = np.zeros_like(painted)
        dx = m[:, 1:] != m[:, :-1]
        dy = m[1:, :] != m[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        edge &= painted
        out[edge] = c[edge]
    ignored = m == IGNORE
    if ignored.any():
        yy, xx = np.indices(m.shape)
        stripe = ((yy + xx) // 2) % 2 == 0
        grey = np.where(stripe[..., None], 0.62, 0.88)
        out[ignored] = 0.25 * out[ignored] + 0.75 * np.broadcast_to(grey, out.shape)[ignored]
    return np.clip(out, 0, 1)


def image_miou(true: np.ndarray, pred: np.ndarray, k: int) -> float | None:
    """mIoU of one image over the classes in its true or predicted mask (unscored pixels left out)."""
    valid = (true != IGNORE) & (true < k) & (pred < k)
    t, p = true[valid].astype(np.int64), pred[valid].astype(np.int64)
    if not t.size:
        return None
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    seen = union > 0
    return float((tp[seen] / union[seen]).mean()) if seen.any() else None


def prediction_grid(images: np.ndarray | None, masks: np.ndarray, preds: np.ndarray, classes: list[str],
                    cols: int = 8) -> str | None:
    """Rows of ``cols`` samples: the image, the true mask over it, the predicted mask over it (with the
    image's mIoU under it), and a legend of the classes that appear."""
    n = min(len(masks), len(preds), len(images) if images is not None else len(masks))
    if n == 0:
        return None
    k = max(len(classes), int(max(masks[:n][masks[:n] != IGNORE].max(initial=0), preds[:n].max(initial=0))) + 1)
    names = [classes[i] if i < len(classes) else f"class {i}" for i in range(k)]
    bg = background_index(names)
    hexes = class_colors(k, bg)
    colors = _rgb(hexes)
    cols = min(cols, n)
    groups = math.ceil(n / cols)
    rows = ["image", "true mask", "prediction"]
    panel = 1.3
    ratios = []
    for g in range(groups):
        ratios += [1, 1, 1] + ([0.18] if g < groups - 1 else [])
    legend_in = 0.55
    height = panel * sum(ratios) + legend_in
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(panel * cols + 0.5, height))
        gs = fig.add_gridspec(len(ratios), cols, height_ratios=ratios, hspace=0.12, wspace=0.06,
                              top=1 - legend_in / height, bottom=0.02, left=0.05, right=0.99)
        shown = set()
        any_ignored = False
        for idx in range(n):
            g, c = divmod(idx, cols)
            true, pred = np.asarray(masks[idx]), np.asarray(preds[idx])
            image = images[idx] if images is not None else None
            h, w = (_to_hwc(image)[0].shape[:2] if image is not None else true.shape)
            t_up, p_up = _resize_nearest(true, h, w), _resize_nearest(pred, h, w)
            base = _image_rgb(image, h, w)
            shown |= set(np.unique(true[true != IGNORE]).tolist()) | set(np.unique(pred).tolist())
            any_ignored |= bool((true == IGNORE).any())
            pics = [base, overlay(base, t_up, colors, bg), overlay(base, p_up, colors, bg)]
            for r, pic in enumerate(pics):
                ax = fig.add_subplot(gs[g * 4 + r, c])
                ax.imshow(pic, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if c == 0:
                    ax.set_ylabel(rows[r], fontsize=8, color=MUTED)
                if r == 2:
                    score = image_miou(true, pred, k)
                    ax.set_xlabel(f"mIoU {fmt.pct(score, 0)}", fontsize=7.5, labelpad=2,
                                  color=ROSE if score is not None and score < 0.5 else INK)
        handles = [Patch(facecolor=hexes[i], edgecolor=hexes[i], label=names[i])
                   for i in sorted(shown) if i != bg and i < k]
        if bg is not None:
            handles.append(Patch(facecolor="white", edgecolor=GRID, label=f"{names[bg]} (no colour)"))
        if any_ignored:
            handles.append(Patch(facecolor="#e5e7eb", edgecolor="#9ca3af", hatch="////", label="not scored (255)"))
        ncols = min(len(handles), 6)
        fig.legend(handles=_row_major(handles, ncols), loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=ncols,
                   fontsize=8, handlelength=1.4, columnspacing=1.4, frameon=False)
        return _png(fig)


def _row_major(items: list, ncols: int) -> list:
    """Reorder ``items`` so that a legend, which fills column by column (the first ``n % ncols`` columns
    one longer), reads left to right, row by row."""
    n = len(items)
    rows = math.ceil(n / ncols) if n else 0
    return [items[i * ncols + j] for j in range(ncols) for i in range(rows) if i * ncols + j < n]


def iou_bars(per_class: dict, classes: list[str], miou: float | None) -> str | None:
    """Horizontal bars of per-class IoU, best on top, in the class colours; the mIoU as a dashed line;
    classes with no IoU (in neither the masks nor the predictions) listed at the bottom."""
    iou = per_class.get("iou") or []
    if not iou:
        return None
    k = len(iou)
    names = [classes[i] if i < len(classes) else f"class {i}" for i in range(k)]
    hexes = class_colors(k, background_index(names))
    scored = sorted((i for i in range(k) if fmt.is_num(iou[i])), key=lambda i: iou[i])  # worst first = bottom
    absent = [i for i in range(k) if not fmt.is_num(iou[i])]
    order = absent + scored  # barh draws from the bottom up
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 0.27 * k + 1.0))
        ax = fig.add_subplot()
        y = np.arange(len(order))
        ax.barh(y, [iou[i] if i in scored else 0 for i in order], color=[hexes[i] for i in order], height=0.68)
        for yi, i in zip(y, order):
            if i in scored:
                ax.text(iou[i] + 0.012, yi, fmt.pct(iou[i], 1), va="center", fontsize=7.5, color=INK, zorder=4,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
            else:
                ax.text(0.012, yi, "absent: in no mask or prediction", va="center", fontsize=7.5,
                        color=MUTED, style="italic")
        ax.set_yticks(y, [names[i] for i in order])
        for tick, i in zip(ax.get_yticklabels(), order):
            if i in absent:
                tick.set_color(MUTED)
        if fmt.is_num(miou):
            ax.axvline(miou, color=INK, lw=1.2, ls="--", zorder=3)
            ax.text(miou, len(order) - 0.35, f" mIoU {fmt.pct(miou, 1)}", fontsize=8, color=INK,
                    fontweight="bold", va="bottom", ha="left")
        ax.set_xlim(0, 1.12)
        ax.set_ylim(-0.6, len(order) - 0.1 + 0.6)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel("IoU (test pixels)")
        ax.set_title("IoU per class")
        return _png(fig)


# ---------------------------------------------------------------------------------------------
# the task's report


def _ok_list(v, k: int, nullable: bool) -> bool:
    return isinstance(v, list) and len(v) == k and all(fmt.is_num(x) or (nullable and x is None) for x in v)


def _check_eval(ev: dict, bad) -> None:
    pc = ev.get("per_class")
    if pc is not None:
        k = len(pc.get("iou") or []) if isinstance(pc, dict) else -1
        if not (k > 0 and _ok_list(pc.get("iou"), k, True) and _ok_list(pc.get("acc"), k, True)
                and _ok_list(pc.get("support"), k, False)):
            bad("per_class")
    if "n_pixels" in ev and not fmt.is_num(ev["n_pixels"]):
        bad("n_pixels")


def _card(data: RunData) -> list[str]:
    """The model card's metrics: the test numbers and the per-class IoU table."""
    from .model_card import _table

    ev, t, classes = data.eval, data.task, data.classes
    out = [_table(["metric", "value"], [[t.metric(k).label, t.metric(k).show(ev.get(k))] for k in t.test_keys]
                  + [["test images", fmt.num(ev.get("n"))], ["labelled test pixels", fmt.num(ev.get("n_pixels"))]]), ""]
    pc = ev.get("per_class") or {}
    iou, acc, sup = (pc.get(k) or [] for k in ("iou", "acc", "support"))
    if iou and len(iou) == len(acc) == len(sup):
        rows = [[classes[i] if i < len(classes) else str(i), fmt.fixed(iou[i]), fmt.fixed(acc[i]), fmt.num(sup[i])]
                for i in range(len(iou))]
        out += ["### Per class (test)", "", _table(["class", "IoU", "pixel accuracy", "pixels"], rows), "",
                "A dash: the class is in no test mask (and, for IoU, in no prediction either).", ""]
    return out


SEGMENTATION = register_report(TaskReport(
    "segmentation",
    metrics={
        "miou": Metric("mIoU", note="mean IoU over classes"),
        "pixel_acc": Metric("pixel accuracy", "pixel acc", note="share of pixels right"),
        "mean_acc": Metric("mean class accuracy", "mean acc", note="mean of per-class pixel recall"),
        "fwiou": Metric("frequency-weighted IoU", "fwIoU", note="IoU weighted by class pixels"),
        "loss": Metric("loss", pct=False),
    },
    files={SAMPLES: "test images with their true and predicted masks"},
    curve=("miou", "mean_acc", "pixel_acc"),
    noun="semantic segmentation model",
    output="per-pixel class logits",
    check_eval=_check_eval,
    card=_card,
))


def _per_class_table(ev: dict, classes: list[str]) -> str:
    pc = ev.get("per_class") or {}
    iou, acc, sup = (pc.get(k) or [] for k in ("iou", "acc", "support"))
    k = min(len(iou), len(acc), len(sup))
    if not k:
        return ""
    names = [classes[i] if i < len(classes) else f"class {i}" for i in range(k)]
    hexes = class_colors(k, background_index(names))
    total = sum(v for v in sup if fmt.is_num(v)) or 1
    scored = [i for i in range(k) if fmt.is_num(iou[i])]
    worst = min(scored, key=lambda i: iou[i]) if scored else None
    rows = ""
    for i in range(k):
        w = 100 * iou[i] if fmt.is_num(iou[i]) else 0
        low = " low" if i == worst else ""
        swatch = f'<span style="display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:7px;' \
                 f'background:{hexes[i]}"></span>'
        rows += (f"<tr><td>{swatch}{esc(names[i])}</td><td class=num>{fmt.fixed(iou[i])}"
                 f'<span class="bar{low}"><span style="width:{w:.1f}%"></span></span></td>'
                 f"<td class=num>{fmt.fixed(acc[i])}</td><td class=num>{esc(fmt.num(sup[i]))}</td>"
                 f"<td class=num>{fmt.pct(sup[i] / total if fmt.is_num(sup[i]) else None, 1)}</td></tr>")
    head = ("<tr><th>class</th><th class=num>IoU</th><th class=num>pixel acc</th><th class=num>pixels</th>"
            "<th class=num>share</th></tr>")
    return f"<h3>Per class</h3><table>{head}{rows}</table>"


@SEGMENTATION.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    ev, classes = data.eval, data.classes
    iou = (ev.get("per_class") or {}).get("iou") or []
    scored = sum(1 for v in iou if fmt.is_num(v))
    table = kv([
        ("split", esc(str(ev.get("split", "test")))),
        ("images", esc(fmt.num(ev.get("n")))),
        ("labelled pixels", esc(fmt.num(ev.get("n_pixels")))),
        ("mIoU", fmt.pct(ev.get("miou"))
         + (f' <span style="color:var(--muted)">over {scored} of {len(iou)} classes</span>' if iou else "")),
        ("pixel accuracy", fmt.pct(ev.get("pixel_acc"))),
        ("mean class accuracy", fmt.pct(ev.get("mean_acc"))),
        ("frequency-weighted IoU", fmt.pct(ev.get("fwiou"))),
        ("evaluation speed", esc(fmt.rate(ev.get("eval_img_per_s")))),
    ])
    bars = img(iou_bars(ev.get("per_class") or {}, classes, ev.get("miou")), "IoU per class",
               "No per-class IoU in eval.json.")
    cm = img(plots.confusion(ev.get("confusion") or [], classes, text="rate",
                             title="Confusion matrix (test pixels; % of each true class)"),
             "pixel confusion matrix", "No confusion matrix in eval.json.")
    pairs = confused_pairs(ev.get("confusion"), classes, "pixels")
    body = (f'<div class="grid2"><div><h3>Headline</h3>{table}{pairs}</div><div>{bars}</div>'
            f"<div>{cm}</div><div>{_per_class_table(ev, classes)}</div></div>")
    return section("evaluation", "Test evaluation",
                   "Metrics over every labelled pixel of the held-out test split, computed once after training. "
                   "IoU of a class = pixels right / pixels that are it or are predicted as it; mIoU averages it "
                   "over the classes present in the masks or the predictions. Rows of the confusion matrix are "
                   "the true class, each summing to 100%.", body)


@SEGMENTATION.section("predictions", "Predictions")
def _predictions(data: RunData) -> str:
    title = "Predictions on test images"
    z = data.arrays.get(SAMPLES, {})
    if not ("masks" in z and "preds" in z and len(z["masks"])):
        if not data.present.get(SAMPLES):
            why = (f"<code>{SAMPLES}</code> is missing: the grid is drawn from the test images, true and predicted "
                   "masks that the test evaluation writes there"
                   + ("" if data.eval else ", and this run has not been evaluated yet")
                   + ". Run <code>visionsmith eval RUN</code> to write it.")
        else:
            why = f"<code>{SAMPLES}</code> holds no usable masks (it needs <code>masks</code> and <code>preds</code>)."
        return section("predictions", title, "", empty(why))
    images = z.get("images")
    if images is not None and len(images) < len(z["masks"]):
        images = None
    grid = img(prediction_grid(images, z["masks"], z["preds"], data.classes), "test images with true and "
               "predicted masks", "Nothing to draw.")
    n = min(len(z["masks"]), len(z["preds"]))
    sub = (f"The first {n} test images: the image, the true mask over it and the predicted mask over it. Each "
           "class has its colour (see the legend); background is left uncoloured"
           + (", hatched grey pixels are not scored" if (np.asarray(z["masks"]) == IGNORE).any() else "")
           + ". Under each prediction: the mIoU of that image over the classes in its masks"
           + ("" if images is not None else f"; <code>{SAMPLES}</code> has no images, so the masks are drawn on grey")
           + ".")
    return section("predictions", title, sub, f'<div class="center">{grid}</div>')
