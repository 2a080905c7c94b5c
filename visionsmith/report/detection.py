"""The detection task's part of the report: the test evaluation (COCO mAP and friends, AP per class),
precision-recall curves per class, a prediction grid (test images with their true and predicted boxes)
and the worst false positives and misses as crop galleries.

It reads what ``tasks/detection.py`` (``eval_artifacts``) writes at the official test evaluation:
``eval.json`` (``metrics/detection.py``), ``pr_curves.npz`` (precision at IoU 0.5 over COCO's 101
recall points, AP per class), ``eval_samples.npz`` (the first test images with their boxes) and
``errors.npz`` (the listed false positives and misses of ``errors.json`` as arrays, with a crop each).

One picture language throughout: every class has its colour (the segmentation report's palette);
ground truth is a dashed box, a prediction a solid one with its class and score in a tag.  Predictions
scoring under ``SHOW_SCORE`` are not drawn (the evaluation's ``ERROR_SCORE``: the misses are counted
against the same line).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter

from . import fmt
from .plots import INK, MUTED, ROSE, STYLE, _png, _to_hwc
from .sections import (
    Metric,
    TaskReport,
    empty,
    esc,
    img,
    kv,
    no_eval,
    register_report,
    section,
)
from .segmentation import _image_rgb, _row_major, class_colors

if TYPE_CHECKING:
    from .run_folder import RunData

SAMPLES = "eval_samples.npz"
CURVES = "pr_curves.npz"
ERRORS = "errors.npz"
SHOW_SCORE = 0.3  # predictions drawn in the grid score at least this (metrics/detection_errors.py ERROR_SCORE)
MATCH_IOU = 0.5  # a prediction finds a box at IoU >= this (metrics/detection.py MATCH_IOU)

FP_KINDS = {"wrong_class": "wrong class", "localisation": "poorly placed",
            "wrong_class_and_localisation": "wrong class & place", "background": "background"}
MISS_KINDS = {"low_score": "found at low score", "wrong_class": "taken for another class",
              "localisation": "poorly placed", "missed": "not detected"}


def _names(classes: list[str], k: int) -> list[str]:
    return [classes[i] if i < len(classes) else f"class {i}" for i in range(k)]


def _colors(k: int) -> list[str]:
    return class_colors(k, None)  # detection's class list has no background entry


def _tag_text(hex_color: str) -> str:
    """Black or white, whichever reads better on ``hex_color``."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return INK if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]`` (0 for empty boxes)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a, area_b = ((x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1]) for x in (a, b))
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ---------------------------------------------------------------------------------------------
# pictures


def _draw_box(ax, box, color: str, truth: bool, text: str | None = None, fontsize: float = 6.0) -> None:
    """One box on ``ax`` (data coordinates = image pixels): ground truth dashed with its label at the
    bottom left inside, a prediction solid with a filled tag at the top left inside."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if truth:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=2.2, alpha=0.65))
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=1.3, ls=(0, (3, 2))))
        if text:
            ax.text(x1 + 0.5, y2 - 0.5, text, fontsize=fontsize, color=INK, va="bottom", ha="left", clip_on=True,
                    bbox={"facecolor": "white", "edgecolor": color, "lw": 0.6, "pad": 0.8, "alpha": 0.85})
    else:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, lw=1.7))
        if text:
            ax.text(x1 + 0.5, y1 + 0.5, text, fontsize=fontsize, color=_tag_text(color), va="top", ha="left",
                    clip_on=True, bbox={"facecolor": color, "edgecolor": "none", "pad": 0.8, "alpha": 0.9})


def _show(ax, image: np.ndarray | None, h: int, w: int) -> None:
    """The image on ``ax`` with data coordinates = continuous pixel coordinates (pixel i spans [i, i + 1])."""
    pic = _image_rgb(image, h, w)
    ax.imshow(pic, extent=(0, w, h, 0), interpolation="nearest" if max(h, w) <= 160 else "antialiased")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _split(arr: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(np.asarray(arr), np.cumsum(np.asarray(counts, int))[:-1]) if len(counts) else []


def image_summary(tb: np.ndarray, tl: np.ndarray, pb: np.ndarray, ps: np.ndarray, pl: np.ndarray,
                  min_score: float = SHOW_SCORE) -> tuple[int, int, int]:
    """(true boxes found, true boxes, confident false positives) of one image: a true box is found by a
    prediction of its class scoring >= ``min_score`` at IoU >= 0.5; a confident prediction is false when
    it finds no true box of its class (the evaluation's errors.json rules)."""
    keep = np.asarray(ps) >= min_score
    pb, pl = np.asarray(pb).reshape(-1, 4)[keep], np.asarray(pl)[keep]
    tb, tl = np.asarray(tb).reshape(-1, 4), np.asarray(tl)
    hit = (_iou(pb, tb) >= MATCH_IOU) & (pl[:, None] == tl[None, :])
    return int(hit.any(0).sum()), len(tb), int((~hit.any(1)).sum())


def prediction_grid(z: dict, classes: list[str], cols: int = 6, min_score: float = SHOW_SCORE) -> str | None:
    """The sample images of ``eval_samples.npz`` with their true boxes (dashed) and predictions scoring
    >= ``min_score`` (solid, tagged with class and score); under each: found / true boxes, false positives."""
    counts_t, counts_p = np.asarray(z["true_counts"], int), np.asarray(z["pred_counts"], int)
    images = z.get("images")
    n = min(len(counts_t), len(counts_p), len(images) if images is not None else len(counts_t))
    if n == 0:
        return None
    tb, tl = _split(z["true_boxes"], counts_t), _split(z["true_labels"], counts_t)
    pb, ps, pl = (_split(z[k], counts_p) for k in ("pred_boxes", "pred_scores", "pred_labels"))
    labels = np.concatenate([np.asarray(z["true_labels"], int).ravel(), np.asarray(z["pred_labels"], int).ravel(), [0]])
    k = max(len(classes), int(labels.max()) + 1)
    names, hexes = _names(classes, k), _colors(k)
    if images is not None:
        h, w = _to_hwc(images[0])[0].shape[:2]
    else:
        every = np.concatenate([np.asarray(z["true_boxes"]).reshape(-1, 4), np.asarray(z["pred_boxes"]).reshape(-1, 4),
                                [[0, 0, 1, 1]]])
        h, w = math.ceil(every[:, 3].max()), math.ceil(every[:, 2].max())
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    panel = 1.9
    legend_in = 0.6
    height = (panel + 0.3) * rows + legend_in
    shown: set[int] = set()
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(panel * cols + 0.3, height))
        gs = fig.add_gridspec(rows, cols, hspace=0.22, wspace=0.06, top=1 - legend_in / height, bottom=0.03,
                              left=0.02, right=0.98)
        for i in range(n):
            ax = fig.add_subplot(gs[i // cols, i % cols])
            _show(ax, images[i] if images is not None else None, h, w)
            for box, lab in zip(tb[i].reshape(-1, 4), tl[i]):
                _draw_box(ax, box, hexes[int(lab)], True, names[int(lab)])
                shown.add(int(lab))
            order = np.argsort(-ps[i], kind="stable")[::-1]  # the best-scored drawn last, on top
            for j in order:
                if ps[i][j] >= min_score:
                    lab = int(pl[i][j])
                    _draw_box(ax, pb[i].reshape(-1, 4)[j], hexes[lab], False, f"{names[lab]} {100 * ps[i][j]:.0f}%")
                    shown.add(lab)
            found, total, false = image_summary(tb[i], tl[i], pb[i], ps[i], pl[i], min_score)
            bad = found < total or false > 0
            ax.set_xlabel(f"found {found}/{total}" + (f" \u00b7 {false} false" if false else ""), fontsize=7.5,
                          labelpad=2, color=ROSE if bad else INK)
        handles = [Line2D([], [], color=INK, lw=1.3, ls=(0, (3, 2)), label="ground truth"),
                   Line2D([], [], color=INK, lw=1.7, label=f"prediction (score \u2265 {100 * min_score:.0f}%)")]
        handles += [Patch(facecolor=hexes[c], edgecolor=hexes[c], label=names[c]) for c in sorted(shown)]
        ncols = min(len(handles), 6)
        fig.legend(handles=_row_major(handles, ncols), loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=ncols,
                   fontsize=8, handlelength=1.8, columnspacing=1.4, frameon=False)
        return _png(fig)


def pr_figure(z: dict, classes: list[str]) -> str | None:
    """One line per class with ground truth: COCO's interpolated precision at IoU 0.5 against recall, its
    AP@.5 (the curve's mean) and AP@[.5:.95] in the legend, best first; the class mean dashed black."""
    prec = np.asarray(z["precision"], float)
    if prec.ndim != 2 or not prec.size:
        return None
    recall = np.asarray(z["recall"], float) if "recall" in z else np.linspace(0, 1, prec.shape[1])
    k = prec.shape[0]
    ap = np.asarray(z.get("ap", np.full(k, -1.0)), float)
    ap50 = np.asarray(z.get("ap50", np.full(k, -1.0)), float)
    names, hexes = _names(classes, k), _colors(k)
    have = [c for c in range(k) if (prec[c] > -1).any()]
    if not have:
        return None
    have.sort(key=lambda c: -ap50[c] if ap50[c] > -1 else -prec[c][prec[c] > -1].mean())
    with rc_context(STYLE):
        fig = Figure(figsize=(7.6, 4.2))
        ax = fig.add_subplot()
        for c in have:
            a50 = ap50[c] if ap50[c] > -1 else prec[c][prec[c] > -1].mean()
            label = f"{names[c]}  {100 * a50:.1f} \u00b7 " + (f"{100 * ap[c]:.1f}" if ap[c] > -1 else fmt.DASH)
            ax.plot(recall, np.where(prec[c] > -1, prec[c], np.nan), color=hexes[c], lw=1.7, label=label)
        mean = np.where(prec[have] > -1, prec[have], 0).mean(0)
        ax.plot(recall, mean, color=INK, lw=2.2, ls="--", label=f"mean  {100 * mean.mean():.1f} (mAP@.5)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.03)
        pct = FuncFormatter(lambda v, _: f"{100 * v:.0f}%")
        ax.xaxis.set_major_formatter(pct)
        ax.yaxis.set_major_formatter(pct)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall per class at IoU 0.5 (test)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="class  AP@.5 \u00b7 AP@[.5:.95]",
                  title_fontsize=8, alignment="left", handlelength=1.8)
        return _png(fig)


def ap_bars(ap: list, ap50: np.ndarray | None, classes: list[str], mean: float | None) -> str | None:
    """Horizontal bars of per-class AP@[.5:.95] (solid, best on top) over AP@.5 (faint, when known), in the
    class colours; mAP as a dashed line; classes without ground truth listed at the bottom."""
    if not ap:
        return None
    k = len(ap)
    names, hexes = _names(classes, k), _colors(k)
    a50 = [float(ap50[i]) if ap50 is not None and i < len(ap50) and ap50[i] > -1 else None for i in range(k)]
    scored = sorted((i for i in range(k) if fmt.is_num(ap[i])), key=lambda i: ap[i])  # worst first = bottom
    absent = [i for i in range(k) if not fmt.is_num(ap[i])]
    order = absent + scored
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 0.27 * k + 1.2))
        ax = fig.add_subplot()
        y = np.arange(len(order))
        if any(v is not None for v in a50):
            ax.barh(y, [a50[i] or 0 for i in order], color=[hexes[i] for i in order], alpha=0.3, height=0.68,
                    label="AP@.5")
        ax.barh(y, [ap[i] if i in scored else 0 for i in order], color=[hexes[i] for i in order], height=0.68,
                label="AP@[.5:.95]")
        for yi, i in zip(y, order):
            if i in scored:
                x = max(ap[i], a50[i] or 0)
                text = fmt.pct(ap[i], 1) + (f"  (@.5 {fmt.pct(a50[i], 0)})" if a50[i] is not None else "")
                ax.text(x + 0.012, yi, text, va="center", fontsize=7.5, color=INK, zorder=4,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
            else:
                ax.text(0.012, yi, "no ground truth in the test split", va="center", fontsize=7.5, color=MUTED,
                        style="italic")
        ax.set_yticks(y, [names[i] for i in order])
        for tick, i in zip(ax.get_yticklabels(), order):
            if i in absent:
                tick.set_color(MUTED)
        if fmt.is_num(mean):
            ax.axvline(mean, color=INK, lw=1.2, ls="--", zorder=3)
            ax.text(mean, len(order) - 0.35, f" mAP {fmt.pct(mean, 1)}", fontsize=8, color=INK, fontweight="bold",
                    va="bottom", ha="left")
        ax.set_xlim(0, 1.3)
        ax.set_ylim(-0.6, len(order) - 0.1 + 0.6)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f}%"))
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
        ax.set_xlabel("AP (test boxes)")
        ax.set_title("AP per class")
        return _png(fig)


def error_gallery(z: dict, key: str, classes: list[str], cols: int = 6) -> str | None:
    """The crops of ``errors.npz`` (``key`` "fp" or "miss"), ranked, each with its boxes: a false positive
    solid with the ground truth it overlaps most dashed; a miss dashed with the prediction that explains it
    solid.  Under each: the class (and score) and what kind of error it is."""
    crops = z.get(f"{key}_crops")
    n = 0 if crops is None else len(crops)
    if not n:
        return None
    boxes, labels, kinds, win = (np.asarray(z[f"{key}_{f}"]) for f in ("box", "label", "kind", "window"))
    obox, olab, oscore, oiou = (np.asarray(z[f"{key}_other_{f}"]) for f in ("box", "label", "score", "iou"))
    score = np.asarray(z.get(f"{key}_score", np.full(n, np.nan)), float)
    image = np.asarray(z.get(f"{key}_image", np.full(n, -1)))
    k = max(len(classes), int(max(labels.max(initial=0), olab.max(initial=0))) + 1)
    names, hexes = _names(classes, k), _colors(k)
    size = crops.shape[-1]
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    panel = 1.7
    with rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(panel * cols + 0.2, (panel + 0.75) * rows))
        for i in range(n):
            ax = fig.add_subplot(rows, cols, i + 1)
            _show(ax, crops[i], size, size)
            x0, y0, x1, _ = (float(v) for v in win[i])
            scale = size / max(x1 - x0, 1e-6)

            def to_crop(b, x0=x0, y0=y0, scale=scale):
                return [(b[0] - x0) * scale, (b[1] - y0) * scale, (b[2] - x0) * scale, (b[3] - y0) * scale]

            lab, other = int(labels[i]), int(olab[i])
            has_other = other >= 0 and np.isfinite(obox[i]).all()
            near = f"{names[other]}" if has_other else ""
            if key == "fp":
                if has_other:
                    _draw_box(ax, to_crop(obox[i]), hexes[other], True, names[other], 6.5)
                _draw_box(ax, to_crop(boxes[i]), hexes[lab], False, f"{100 * score[i]:.0f}%", 6.5)
                lines = [f"{names[lab]} {100 * score[i]:.0f}%", FP_KINDS.get(str(kinds[i]), str(kinds[i])),
                         f"on {near}, IoU {oiou[i]:.2f}" if has_other else "on no true box"]
            else:
                _draw_box(ax, to_crop(boxes[i]), hexes[lab], True, None)
                if has_other:
                    _draw_box(ax, to_crop(obox[i]), hexes[other], False,
                              f"{names[other]} {100 * oscore[i]:.0f}%", 6.5)
                lines = [names[lab], MISS_KINDS.get(str(kinds[i]), str(kinds[i])),
                         f"{near} {100 * oscore[i]:.0f}%, IoU {oiou[i]:.2f}" if has_other else "no prediction near"]
            ax.set_title(f"#{i + 1}" + (f" \u00b7 image {int(image[i])}" if image[i] >= 0 else ""), fontsize=7,
                         color=MUTED, loc="center", fontweight="normal", pad=2)
            ax.set_xlabel("\n".join(lines[:2]), fontsize=7.5, color=INK, labelpad=2, linespacing=1.3)
            ax.text(0.5, -0.33, lines[2], transform=ax.transAxes, ha="center", va="top", fontsize=6.8, color=MUTED)
        fig.subplots_adjust(hspace=0.45, wspace=0.1)
        return _png(fig)


# ---------------------------------------------------------------------------------------------
# the task's report


def _check_eval(ev: dict, bad) -> None:
    ap = ev.get("per_class_ap")
    if ap is not None and not (isinstance(ap, list) and ap and all(fmt.is_num(v) or v is None for v in ap)
                               and (not isinstance(ev.get("classes"), list) or len(ap) == len(ev["classes"]))):
        bad("per_class_ap")
    if "n_matched" in ev and not fmt.is_num(ev["n_matched"]):
        bad("n_matched")


def _curves(data: RunData) -> dict:
    z = data.arrays.get(CURVES, {})
    return z if "precision" in z and np.asarray(z["precision"]).ndim == 2 else {}


def _ap50(data: RunData) -> np.ndarray | None:
    z = _curves(data)
    return np.asarray(z["ap50"], float) if "ap50" in z else None


def _n_gt(data: RunData) -> np.ndarray | None:
    z = _curves(data)
    return np.asarray(z["n_gt"]) if "n_gt" in z else None


def _kpis(data: RunData) -> list[tuple[str, str, str]]:
    ev = data.eval
    if ev or not data.val:
        return [
            ("test mAP", fmt.pct(ev.get("map")), f"IoU .50:.95 \u00b7 mAP@.75 {fmt.pct(ev.get('map75'))}"),
            ("test mAP@.5", fmt.pct(ev.get("map50")), f"AR@100 {fmt.pct(ev.get('ar100'))}"),
            ("matched IoU", fmt.pct(ev.get("mean_iou_matched")),
             f"mean over {fmt.num(ev.get('n_matched'))} boxes found at IoU \u2265 0.5"),
        ]
    best = max(data.val, key=lambda r: r.get("map") if fmt.is_num(r.get("map")) else -1)
    return [
        ("val mAP", fmt.pct(best.get("map")), f"best epoch {fmt.num(best.get('epoch'))}"),
        ("val mAP@.5", fmt.pct(best.get("map50")), "at the best epoch"),
        ("val AR@100", fmt.pct(best.get("ar100")), "at the best epoch"),
    ]


def _card(data: RunData) -> list[str]:
    """The model card's metrics: the test numbers and the per-class AP table."""
    from .model_card import _table

    ev, t, classes = data.eval, data.task, data.classes
    out = [_table(["metric", "value"], [[t.metric(k).label, t.metric(k).show(ev.get(k))] for k in t.test_keys]
                  + [["test images", fmt.num(ev.get("n"))],
                     ["boxes matched at IoU \u2265 0.5", fmt.num(ev.get("n_matched"))]]), ""]
    ap = ev.get("per_class_ap") or []
    if ap:
        ap50, n_gt = _ap50(data), _n_gt(data)
        head = ["class", "AP@[.5:.95]"] + (["AP@.5"] if ap50 is not None else []) + \
            (["test boxes"] if n_gt is not None else [])
        rows = []
        for i, name in enumerate(_names(classes, len(ap))):
            row = [name, fmt.fixed(ap[i])]
            if ap50 is not None:
                row.append(fmt.fixed(float(ap50[i])) if i < len(ap50) and ap50[i] > -1 else fmt.DASH)
            if n_gt is not None:
                row.append(fmt.num(int(n_gt[i])) if i < len(n_gt) else fmt.DASH)
            rows.append(row)
        out += ["### Per class (test)", "", _table(head, rows), "",
                "A dash: the class has no box in the test split.", ""]
    return out


DETECTION = register_report(TaskReport(
    "detection",
    metrics={
        "map": Metric("mAP@[.5:.95]", "mAP", note="AP averaged over IoU .50:.95 (COCO)"),
        "map50": Metric("mAP@.5", note="AP at IoU 0.5 (VOC)"),
        "map75": Metric("mAP@.75", note="AP at IoU 0.75"),
        "ar100": Metric("AR@100", note="recall, at most 100 detections per image"),
        "mean_iou_matched": Metric("matched IoU", note="mean IoU of boxes found at IoU \u2265 0.5"),
        "loss": Metric("loss", pct=False),
    },
    files={SAMPLES: "test images with their true and predicted boxes",
           CURVES: "precision-recall curves and AP per class",
           ERRORS: "crops of the worst false positives and misses"},
    curve=("map", "map50", "map75", "ar100"),
    noun="object detector",
    output="classes; per detected object a box (x1, y1, x2, y2 pixels), a class and a score (FCOS, "
           "class-aware NMS)",
    kpis=_kpis,
    check_eval=_check_eval,
    card=_card,
))


def _why_missing(data: RunData, fname: str, what: str, needs: str) -> str:
    """The empty-state text of a section drawn from ``fname``."""
    if not data.present.get(fname):
        return (f"<code>{fname}</code> is missing: {what} "
                + ("" if data.eval else "; this run has not been evaluated yet")
                + ". Run <code>visionsmith eval RUN</code> to write it.")
    return f"<code>{fname}</code> holds no usable data (it needs {needs})."


def _swatch(color: str) -> str:
    return (f'<span style="display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:7px;'
            f'background:{color}"></span>')


def _per_class_table(data: RunData) -> str:
    ap = data.eval.get("per_class_ap") or []
    if not ap:
        return ""
    k = len(ap)
    names, hexes = _names(data.classes, k), _colors(k)
    ap50, n_gt = _ap50(data), _n_gt(data)
    scored = [i for i in range(k) if fmt.is_num(ap[i])]
    worst = min(scored, key=lambda i: ap[i]) if scored else None
    rows = ""
    for i in range(k):
        w = 100 * ap[i] if fmt.is_num(ap[i]) else 0
        a50 = float(ap50[i]) if ap50 is not None and i < len(ap50) and ap50[i] > -1 else None
        rows += (f"<tr><td>{_swatch(hexes[i])}{esc(names[i])}</td><td class=num>{fmt.fixed(ap[i])}"
                 f'<span class="bar{" low" if i == worst else ""}"><span style="width:{w:.1f}%"></span></span></td>'
                 + (f"<td class=num>{fmt.fixed(a50)}</td>" if ap50 is not None else "")
                 + (f"<td class=num>{esc(fmt.num(int(n_gt[i])) if i < len(n_gt) else fmt.DASH)}</td>"
                    if n_gt is not None else "") + "</tr>")
    head = ("<tr><th>class</th><th class=num>AP@[.5:.95]</th>" + ("<th class=num>AP@.5</th>" if ap50 is not None
                                                                  else "")
            + ("<th class=num>test boxes</th>" if n_gt is not None else "") + "</tr>")
    return f"<h3>Per class</h3><table>{head}{rows}</table>"


@DETECTION.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    ev = data.eval
    ap = ev.get("per_class_ap") or []
    scored = sum(1 for v in ap if fmt.is_num(v))
    n_gt = _n_gt(data)
    errs = data.arrays.get(ERRORS, {})

    def count(key: str) -> str:
        return esc(fmt.num(int(errs[key]))) if key in errs else fmt.DASH

    table = kv([
        ("split", esc(str(ev.get("split", "test")))),
        ("images", esc(fmt.num(ev.get("n")))),
        ("true boxes", esc(fmt.num(int(n_gt.sum()))) if n_gt is not None else count("n_ground_truth")),
        ("mAP@[.5:.95]", fmt.pct(ev.get("map"))
         + (f' <span style="color:var(--muted)">over {scored} of {len(ap)} classes</span>' if ap else "")),
        ("mAP@.5", fmt.pct(ev.get("map50"))),
        ("mAP@.75", fmt.pct(ev.get("map75"))),
        ("AR@100", fmt.pct(ev.get("ar100"))),
        ("matched IoU", fmt.pct(ev.get("mean_iou_matched"))
         + f' <span style="color:var(--muted)">over {esc(fmt.num(ev.get("n_matched")))} boxes</span>'),
        (f"false positives (score \u2265 {100 * SHOW_SCORE:.0f}%)", count("n_false_positives_confident")),
        ("missed true boxes", count("n_misses")),
        ("evaluation speed", esc(fmt.rate(ev.get("eval_img_per_s")))),
    ])
    bars = img(ap_bars(ap, _ap50(data), data.classes, ev.get("map")), "AP per class", "No per-class AP in eval.json.")
    body = f'<div class="grid2"><div><h3>Headline</h3>{table}{_per_class_table(data)}</div><div>{bars}</div></div>'
    return section("evaluation", "Test evaluation",
                   "COCO box metrics (pycocotools) over every test image, computed once after training. AP of a "
                   "class is the area under its precision-recall curve; mAP@[.5:.95] averages it over the classes "
                   "with test boxes and over IoU thresholds 0.50, 0.55, ..., 0.95, mAP@.5 takes IoU 0.5 only. "
                   "AR@100: the share of true boxes found with at most 100 detections per image. Matched IoU: the "
                   "mean overlap of the boxes found at IoU \u2265 0.5.", body)


@DETECTION.section("pr", "Precision-recall curves")
def _pr(data: RunData) -> str:
    title = "Precision-recall curves"
    z = _curves(data)
    if not z:
        return section("pr", title, "", empty(_why_missing(
            data, CURVES, "the curves are drawn from the per-class precision the test evaluation writes there",
            "<code>precision</code> [classes, 101]")))
    fig = img(pr_figure(z, data.classes or [str(c) for c in z.get("classes", [])]),
              "precision-recall curves per class", "No class has a box in the test split: no curve to draw.")
    prec = np.asarray(z["precision"])
    without = [n for c, n in enumerate(_names(data.classes, prec.shape[0])) if not (prec[c] > -1).any()]
    sub = ("Per class, the precision of its detections taken best-scored first, against the share of its test "
           "boxes found so far (a detection counts when it overlaps an unmatched true box of its class at IoU "
           "\u2265 0.5; COCO's interpolated precision at 101 recall points, at most 100 detections per image). The "
           "area under a curve is the class's AP@.5; the legend gives it and AP@[.5:.95]. The dashed black "
           "line is the mean over classes, whose area is mAP@.5."
           + (f" No curve for {esc(', '.join(without))}: no box of it in the test split." if without else ""))
    return section("pr", title, sub, f'<div class="center">{fig}</div>')


@DETECTION.section("predictions", "Predictions")
def _predictions(data: RunData) -> str:
    title = "Predictions on test images"
    z = data.arrays.get(SAMPLES, {})
    need = ("true_boxes", "true_labels", "true_counts", "pred_boxes", "pred_scores", "pred_labels", "pred_counts")
    if not (all(k in z for k in need) and len(z["true_counts"])):
        return section("predictions", title, "", empty(_why_missing(
            data, SAMPLES, "the grid is drawn from the test images, true and predicted boxes that the test "
            "evaluation writes there", "the images with <code>true_*</code> and <code>pred_*</code> boxes")))
    if z.get("images") is not None and len(z["images"]) < len(z["true_counts"]):
        z = {k: v for k, v in z.items() if k != "images"}
    grid = img(prediction_grid(z, data.classes), "test images with true and predicted boxes", "Nothing to draw.")
    n = min(len(z["true_counts"]), len(z["pred_counts"]))
    sub = (f"The first {n} test images. Dashed boxes: the ground truth, labelled with its class at the bottom; "
           f"solid boxes: the predictions scoring at least {100 * SHOW_SCORE:.0f}%, tagged with class and score "
           "(weaker ones are hidden). Each class has its colour. Under each image: the true boxes a prediction of "
           f"their class found at IoU \u2265 0.5, and the shown predictions that found none (red when anything "
           "was missed or false)."
           + ("" if z.get("images") is not None else f" <code>{SAMPLES}</code> has no images: boxes on grey."))
    return section("predictions", title, sub, f'<div class="center">{grid}</div>')


def _error_table(z: dict, key: str, classes: list[str]) -> str:
    n = len(z.get(f"{key}_crops", []))
    if not n:
        return ""
    k = max(len(classes), int(np.asarray(z[f"{key}_label"]).max(initial=0)) + 1,
            int(np.asarray(z[f"{key}_other_label"]).max(initial=0)) + 1)
    names = _names(classes, k)
    rows = ""
    for i in range(n):
        lab, other = int(z[f"{key}_label"][i]), int(z[f"{key}_other_label"][i])
        kind = str(z[f"{key}_kind"][i])
        b = np.asarray(z[f"{key}_box"][i], float)
        o_iou, o_score = float(z[f"{key}_other_iou"][i]), float(z[f"{key}_other_score"][i])
        if key == "fp":
            what = f"{esc(names[lab])} {fmt.pct(float(z['fp_score'][i]), 0)}"
            other_html = (f"{esc(names[other])}, IoU {o_iou:.2f}" if other >= 0 else "none overlaps")
            kind_html = FP_KINDS.get(kind, kind)
        else:
            what = f"{esc(names[lab])} <span style=\"color:var(--muted)\">{b[2] - b[0]:.0f}\u00d7{b[3] - b[1]:.0f} px</span>"
            other_html = (f"{esc(names[other])} {fmt.pct(o_score, 0)}, IoU {o_iou:.2f}" if other >= 0 else "none")
            kind_html = MISS_KINDS.get(kind, kind)
        rows += (f"<tr><td class=num>{i + 1}</td><td class=num>{int(z[f'{key}_image'][i])}</td><td>{what}</td>"
                 f"<td>{esc(kind_html)}</td><td>{other_html}</td></tr>")
    head = ("<tr><th class=num>#</th><th class=num>image</th>"
            + ("<th>prediction</th><th>kind</th><th>true box it overlaps most</th>" if key == "fp"
               else "<th>true box</th><th>kind</th><th>prediction that explains it</th>") + "</tr>")
    return f"<details><summary>As a table</summary><table>{head}{rows}</table></details>"


def _kinds_line(z: dict, key: str, names: dict) -> str:
    kinds = [str(v) for v in np.asarray(z.get(f"{key}_kind", []))]
    parts = [f"{kinds.count(k)} {v}" for k, v in names.items() if kinds.count(k)]
    return esc(", ".join(parts))


@DETECTION.section("errors", "False positives and misses")
def _errors(data: RunData) -> str:
    title = "False positives and misses"
    z = data.arrays.get(ERRORS, {})
    need = [f"{key}_{f}" for key in ("fp", "miss") for f in ("crops", "box", "label", "kind", "window", "image",
                                                               "other_box", "other_label", "other_score", "other_iou")]
    if not all(k in z for k in need):
        return section("errors", title, "", empty(_why_missing(
            data, ERRORS, "the galleries are drawn from the crops of the worst errors that the test evaluation "
            "writes there (their list is in <code>errors.json</code>)", "<code>fp_*</code> and <code>miss_*</code> "
            "arrays")))
    classes = data.classes

    def num(key: str) -> str:
        return fmt.num(int(z[key])) if key in z else fmt.DASH

    n_fp, n_miss = len(z["fp_crops"]), len(z["miss_crops"])
    fp_img = img(error_gallery(z, "fp", classes), "worst false positives",
                 "No false positive: every prediction found a true box of its class.")
    miss_img = img(error_gallery(z, "miss", classes), "worst misses",
                   f"No miss: every true box was found by a prediction of its class scoring "
                   f"\u2265 {100 * SHOW_SCORE:.0f}%.")
    fp_sub = (f"<p>{num('n_false_positives_confident')} predictions scoring \u2265 {100 * SHOW_SCORE:.0f}% (of "
              f"{num('n_false_positives')} at any score, among {num('n_predictions')} detections) overlap no true box "
              f"of their class at IoU \u2265 0.5. The {n_fp} best-scored"
              + (f" ({_kinds_line(z, 'fp', FP_KINDS)})" if n_fp else "")
              + ", each solid with the true box it overlaps most dashed: <i>wrong class</i> when that box, of "
              "another class, overlaps it at IoU \u2265 0.5; <i>poorly placed</i> when a box of its class overlaps "
              "it at 0.1 to 0.5; <i>wrong class &amp; place</i> when only a box of another class does; "
              "<i>background</i> when nothing overlaps it at IoU 0.1.</p>")
    miss_sub = (f"<p>{num('n_misses')} of {num('n_ground_truth')} true boxes were found by no prediction of "
                f"their class scoring \u2265 {100 * SHOW_SCORE:.0f}% at IoU \u2265 0.5. The {n_miss} largest"
                + (f" ({_kinds_line(z, 'miss', MISS_KINDS)})" if n_miss else "")
                + ", each dashed with the prediction that explains it solid: <i>found at low score</i> (its class "
                "was there, under the line), <i>taken for another class</i>, <i>poorly placed</i> (its class at "
                "IoU 0.1 to 0.5), or <i>not detected</i> (with the prediction overlapping it most, if any).</p>")
    body = (f"<h3>Worst false positives</h3>{fp_sub}<div class=\"center\">{fp_img}</div>{_error_table(z, 'fp', classes)}"
            f"<h3>Misses</h3>{miss_sub}<div class=\"center\">{miss_img}</div>{_error_table(z, 'miss', classes)}")
    return section("errors", title, "Over the whole test split, cropped around the boxes (black: outside the "
                   "image). Image numbers are rows of the test split, as in <code>detections.json</code> and "
                   "<code>errors.json</code>.", body)
