"""The compression task's part of the report: this run's point on the rate-distortion plane among the
classical codecs' curves (bits per pixel against PSNR and against MS-SSIM), the bits each classical
codec needs for the same PSNR, and crops of every test photograph: original, this codec, and JPEG
at the nearest file size.  ``rd_figure`` is also what ``visionsmith rd`` draws for several runs.
"""
from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from .plots import ACCENT, AMBER, INK, MUTED, ROSE, SLATE, STYLE, TEAL, _png, crop_grid
from .sections import Metric, TaskReport, crops_card, esc, img, no_eval, register_report, section

if TYPE_CHECKING:
    from .run_folder import RunData

SAMPLES = "eval_samples.npz"
CODEC_COLORS = {"jpeg": SLATE, "webp": AMBER, "avif": TEAL, "jpeg2000": ROSE}
LEARNED_COLORS = [ACCENT, INK, "#7c3aed", "#059669"]

COMPRESSION = register_report(TaskReport(
    task="compression",
    metrics={"rd": Metric("rate-distortion loss", "rd", pct=False, digits=4,
                          note="lmbda x 255^2 x MSE + bpp, the mean over the rate levels; lower is better"),
             "bpp": Metric("bits per pixel (real files)", "bpp", pct=False, digits=4, note="mean over the levels"),
             "psnr": Metric("PSNR (dB)", "PSNR", pct=False, digits=4, note="mean over the levels"),
             "ms_ssim": Metric("MS-SSIM", pct=False, digits=4, note="mean over the levels"),
             "bpp_estimated": Metric("bits per pixel (entropy model)", "bpp est.", pct=False, digits=4)},
    files={SAMPLES: "the side-by-side crops"}, optional=frozenset({SAMPLES}), curve=("psnr", "bpp"),
    noun="learned image codec", output="a bitstream and the decoded image",
))


def _axes(fig: Figure, curves: dict[str, list[dict]], baselines: dict[str, list[dict]]) -> None:
    for i, key in enumerate(("psnr", "ms_ssim")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, pts in baselines.items():
            pts = [p for p in pts if p.get(key) is not None]
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "-o", ms=3, lw=1.2,
                    color=CODEC_COLORS.get(name, SLATE), label=name.upper() if name != "jpeg2000" else "JPEG 2000")
        for j, (name, pts) in enumerate(curves.items()):
            pts = [p for p in pts if p.get(key) is not None]
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "-D", ms=5, lw=2,
                    color=LEARNED_COLORS[j % len(LEARNED_COLORS)], label=name)
        ax.set_xlim(0, 2.0)
        ax.axvspan(0.2, 1.5, color="#f1f5f9", zorder=0)
        ax.set_xlabel("bits per pixel (whole files)", color=MUTED)
        ax.set_ylabel("PSNR (dB, RGB)" if key == "psnr" else "MS-SSIM (RGB)", color=MUTED)
        if key == "ms_ssim":
            lows = [p[key] for c in (*curves.values(), *baselines.values()) for p in c
                    if p.get(key) is not None and p["bpp"] <= 2.0]
            if lows:
                ax.set_ylim(max(0.0, min(lows) - 0.01), 1.0)
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_title("higher and further left is better" if i == 0 else "shaded: the BD-rate range (0.2-1.5 bpp)",
                     loc="left", fontsize=9, color=MUTED)


def rd_png(curves: dict[str, list[dict]], baselines: dict[str, list[dict]]) -> str:
    """The two rate-distortion panels as a base64 PNG (the report's form)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(10.5, 4.0))
        _axes(fig, curves, baselines)
        fig.subplots_adjust(wspace=0.25)
        return _png(fig)


def rd_figure(curves: dict[str, list[dict]], baselines: dict[str, list[dict]]) -> bytes:
    """The same as PNG file bytes (``visionsmith rd``)."""
    return base64.b64decode(rd_png(curves, baselines))


def side_by_side(z: dict) -> str | None:
    """One row per test photo: original | this codec | JPEG at the nearest file size (160 px crops)."""
    keys = [k for k in ("original", "output", "jpeg") if k in z]
    if len(keys) < 3 or not len(z["original"]):
        return None
    n = len(z["original"])
    names = [str(x) for x in z.get("names", [])] + [""] * n
    bpp, jbpp = list(z.get("bpp", [])) + [None] * n, list(z.get("jpeg_bpp", [])) + [None] * n
    titles = [["original", f"this codec, {fmt.num(bpp[i], 3)} bpp", f"JPEG, {fmt.num(jbpp[i], 3)} bpp"] for i in range(n)]
    return crop_grid([[z[k][i] for k in keys] for i in range(n)], titles, names[:n], size=2.0)


@COMPRESSION.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    ev = data.eval
    levels = [r for r in ev.get("levels") or [] if isinstance(r, dict)]
    codecs = list(ev.get("baselines") or {})
    head = "".join(f"<th class=num>{esc(c)} at the same PSNR</th>" for c in codecs)
    rows = ""
    for r in levels:
        same = r.get("same_psnr_bpp") or {}
        rows += (f"<tr><td>{r.get('level')}</td><td class=num>{esc(fmt.num(r.get('lmbda'), 4))}</td>"
                 f"<td class=num>{esc(fmt.num(r.get('bpp'), 4))}</td><td class=num>{esc(fmt.num(r.get('psnr'), 4))}</td>"
                 f"<td class=num>{esc(fmt.num(r.get('ms_ssim'), 4))}</td>"
                 f"<td class=num>{esc(fmt.num(r.get('bpp_estimated'), 4))}</td>"
                 + "".join(f"<td class=num>{esc(fmt.num(same.get(c), 4))} bpp</td>" for c in codecs) + "</tr>")
    table = ("<table><tr><th>level</th><th class=num>lmbda</th><th class=num>bpp (files)</th><th class=num>PSNR</th>"
             f"<th class=num>MS-SSIM</th><th class=num>bpp (entropy model)</th>{head}</tr>{rows}</table>")
    bd = ev.get("bd_rate") or {}
    if bd:
        table += ("<h3>BD-rate of this codec (negative: fewer bits for the same quality), 0.2-1.5 bpp</h3><table>"
                  "<tr><th>against</th><th class=num>PSNR</th><th class=num>MS-SSIM</th></tr>" + "".join(
                      f"<tr><td>{esc(c)}</td><td class=num>{esc(_pct(v.get('psnr')))}</td>"
                      f"<td class=num>{esc(_pct(v.get('ms_ssim')))}</td></tr>" for c, v in bd.items()) + "</table>")
    curve = {"this run": [{k: r.get(k) for k in ("bpp", "psnr", "ms_ssim")} for r in levels]}
    pic = img(rd_png(curve, ev.get("baselines") or {}), "rate-distortion", "")
    return section("evaluation", "Test evaluation",
                   "Every held-out photograph is coded at every rate level to a real file (header included), decoded "
                   "from it, and scored as the decoded 8-bit image; the classical codecs (Pillow) code the same "
                   "photographs over their quality settings. Several runs on one plot: "
                   "<code>visionsmith rd RUN... --out DIR</code>.", f"{table}<div class=center>{pic}</div>")


def _pct(v) -> str:
    return "n/a" if not fmt.is_num(v) else f"{v:+.1f}%"


@COMPRESSION.section("samples", "Side by side")
def _samples(data: RunData) -> str:
    z = data.arrays.get(SAMPLES, {})
    level = int(z["level"]) if "level" in z else 0
    return crops_card(data, SAMPLES, "samples", "Side by side", side_by_side,
                      "The centre 160 x 160 pixels of every held-out photograph at their own resolution: the original, "
                      f"this codec's decoded file at rate level {level} (the one nearest 0.5 bpp), and JPEG at the "
                      "quality whose file is closest in size.")
