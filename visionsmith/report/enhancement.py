"""The enhancement task's part of the report: the network against the degraded input and the
classical baselines on the same held-out photographs (a table and per-image bars), and crops of
every test photo side by side: degraded, the best baseline, the network, the clean original.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from .plots import INK, MUTED, ROSE, SLATE, STYLE, _png, crop_grid
from .sections import Metric, TaskReport, crops_card, esc, img, no_eval, register_report, section

if TYPE_CHECKING:
    from .run_folder import RunData

SAMPLES = "eval_samples.npz"

ENHANCEMENT = register_report(TaskReport(
    task="enhancement",
    metrics={"psnr": Metric("PSNR (dB)", "PSNR", pct=False, digits=4, note="RGB, 8-bit output vs the clean photo"),
             "ssim": Metric("SSIM", pct=False, digits=4),
             "psnr_y": Metric("PSNR on Y (dB)", "PSNR-Y", pct=False, digits=4),
             "ssim_y": Metric("SSIM on Y", "SSIM-Y", pct=False, digits=4),
             "psnr_input": Metric("input PSNR (dB)", "input", pct=False, digits=4)},
    files={SAMPLES: "the side-by-side crops"}, optional=frozenset({SAMPLES}), curve=("psnr",),
    noun="image restoration network", output="restored pixels",
))


def _rows(ev: dict) -> list[tuple[str, dict]]:
    """(method, scores) for the network and every baseline, best PSNR first."""
    rows = [("this network", {k: ev.get(k) for k in ("psnr", "ssim", "psnr_y", "ssim_y")})]
    rows += [(name, s) for name, s in (ev.get("baselines") or {}).items() if isinstance(s, dict)]
    return sorted(rows, key=lambda r: -(r[1].get("psnr") or -1e9))


def _bars(ev: dict) -> str | None:
    """Per-image PSNR of the network next to the input's (the gain is the gap)."""
    per = [r for r in ev.get("per_image") or [] if isinstance(r, dict) and fmt.is_num(r.get("psnr"))]
    if not per:
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(7.2, 0.34 * len(per) + 1.1))
        ax = fig.add_subplot()
        y = np.arange(len(per))
        ax.barh(y, [r["psnr"] for r in per], color=ROSE, height=0.6, label="this network")
        for i, r in enumerate(per):
            ax.text(r["psnr"] + 0.1, i, f"{r['psnr']:.2f}", va="center", fontsize=8, color=INK)
        ax.set_yticks(y, [str(r.get("image")) for r in per], fontsize=8)
        ax.invert_yaxis()
        lo = min(r["psnr"] for r in per)
        ax.set_xlim(max(0, lo - 6), max(r["psnr"] for r in per) + 1.5)
        base = ev.get("psnr_input")
        if fmt.is_num(base):
            ax.axvline(base, color=SLATE, lw=1, ls="--", label=f"degraded input (mean {base:.2f})")
        ax.set_xlabel("PSNR (dB), higher is better", color=MUTED)
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_title("PSNR per held-out photograph", loc="left", fontsize=10)
        return _png(fig)


def side_by_side(z: dict) -> str | None:
    """One row per test image: degraded | best baseline | network | clean (128 px crops)."""
    keys = [k for k in ("input", "baseline", "output", "clean") if k in z]
    if len(keys) < 3 or not len(z[keys[0]]):
        return None
    n = len(z[keys[0]])
    names = [str(x) for x in z.get("names", [])] + [""] * n
    best = str(z.get("baseline_name", "")) or "baseline"
    titles = {"input": "degraded", "baseline": best, "output": "this network", "clean": "clean"}
    return crop_grid([[z[k][i] for k in keys] for i in range(n)],
                     [[titles[k] for k in keys]] + [[None] * len(keys)] * (n - 1), names[:n])


def _sigma_table(ev: dict) -> str:
    """PSNR at each noise level of ``enhance.eval_sigmas`` (one blind model): the network, the input and
    every baseline, each on the same seeded noise."""
    rows = [r for r in ev.get("by_sigma") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    names = sorted({n for r in rows for n in (r.get("baselines") or {})})
    head = "".join(f"<th class=num>{esc(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{esc(fmt.num(r.get('sigma'), 3))}</td><td class=num>{esc(fmt.num(r.get('psnr_input'), 4))}</td>"
        + "".join(f"<td class=num>{esc(fmt.num(((r.get('baselines') or {}).get(n) or {}).get('psnr'), 4))}</td>"
                  for n in names)
        + f"<td class=num><b>{esc(fmt.num(r.get('psnr'), 4))}</b></td></tr>" for r in rows)
    return ("<h3>At each noise level (PSNR, dB)</h3><table><tr><th>sigma</th><th class=num>input</th>"
            f"{head}<th class=num>this network</th></tr>{body}</table>")


@ENHANCEMENT.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    ev = data.eval
    rows = "".join(
        f"<tr><td>{'<b>' + esc(name) + '</b>' if name == 'this network' else esc(name)}</td>"
        + "".join(f"<td class=num>{esc(fmt.num(s.get(k), 4))}</td>" for k in ("psnr", "ssim", "psnr_y", "ssim_y"))
        + f"<td>{esc(str(s.get('setting', '')))}</td></tr>" for name, s in _rows(ev))
    rows += (f"<tr><td>degraded input</td><td class=num>{esc(fmt.num(ev.get('psnr_input'), 4))}</td>"
             "<td></td><td></td><td></td><td></td></tr>")
    table = ("<table><tr><th>method</th><th class=num>PSNR</th><th class=num>SSIM</th><th class=num>PSNR-Y</th>"
             f"<th class=num>SSIM-Y</th><th>setting</th></tr>{rows}</table>")
    bars = img(_bars(ev), "PSNR per image", "No per-image scores in eval.json.")
    body = (f'<div class="grid2"><div><h3>Against the classical methods</h3>{table}{_sigma_table(ev)}</div>'
            f'<div>{bars}</div></div>')
    return section("evaluation", "Test evaluation",
                   "Every method restores the same degraded versions of the held-out photographs (the noise is "
                   "seeded), and every output is scored as the 8-bit image a user gets. PSNR/SSIM on RGB, and on "
                   "luma Y (ITU-R BT.601), the super-resolution convention (there a border of the scale factor is "
                   "not scored). Baseline settings were chosen on the validation photographs.", body)


@ENHANCEMENT.section("samples", "Before and after")
def _samples(data: RunData) -> str:
    return crops_card(data, SAMPLES, "samples", "Before and after", side_by_side,
                      "The centre 128 x 128 pixels of every held-out photograph, at their own resolution: the degraded "
                      "input (for super-resolution, enlarged without interpolation), the best classical method, this "
                      "network, and the clean original.")
