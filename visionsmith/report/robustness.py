"""Robust accuracy against epsilon: the plot and the report section (from ``robustness.json``)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from .plots import ACCENT, AMBER, ROSE, SLATE, STYLE, TEAL, _png

esc = html.escape
COLORS = [ROSE, ACCENT, TEAL, AMBER, SLATE]


def read_curves(run_dir: Path) -> dict:
    """``robustness.json`` of a run folder: {key: curve}; {} when absent or unreadable."""
    try:
        data = json.loads((Path(run_dir) / "robustness.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("points"), list)}


def _label(key: str, c: dict) -> str:
    if c.get("label"):  # set by callers that plot several runs together
        return str(c["label"])
    steps = "" if c.get("attack") == "fgsm" else f"-{c.get('steps')}"
    return f"{str(c.get('attack', key)).upper()}{steps} ({'L-inf' if c.get('norm') == 'linf' else 'L2'})"


def eps_text(e: float) -> str:
    """0.0314 -> '8/255' when it is a whole number of grey levels, else the decimal."""
    k = e * 255
    return f"{round(k)}/255" if e and abs(k - round(k)) < 1e-6 and k <= 16 else f"{e:g}"


def robustness_plot(curves: dict, title: str = "Accuracy under attack") -> str | None:
    """Accuracy against eps, one line per attack; eps = 0 is the clean accuracy."""
    if not curves:
        return None
    with rc_context(STYLE):
        fig = Figure(figsize=(5.3, 3.1))
        ax = fig.add_subplot()
        ends = []
        for (key, c), color in zip(curves.items(), COLORS * 4):
            pts = sorted(c["points"], key=lambda p: p["eps"])
            xs, ys = [p["eps"] for p in pts], [p["acc"] for p in pts]
            ax.plot(xs, ys, color=color, lw=2, marker="o", ms=5, label=_label(key, c))
            ends.append((ys[-1], xs[-1], color))
        # Final-eps values to the right of the last point, nudged apart when two curves end close.
        last = None
        for y, x, color in sorted(ends):
            ty = y if last is None or y - last > 0.06 else last + 0.06
            ax.annotate(f"{y:.3f}", (x, y), xytext=(x * 1.025, ty), textcoords="data", ha="left", va="center",
                        color=color, fontsize=8, fontweight="bold")
            last = ty
        ax.set_xlim(right=max(x for _, x, _ in ends) * 1.14 if any(x for _, x, _ in ends) else None)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("epsilon (fraction of the [0, 1] pixel range)")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(loc="lower left")
        return _png(fig)


def robustness_table(curves: dict) -> str:
    """One row per attack, one column per eps (the union of all curves' eps)."""
    eps = sorted({p["eps"] for c in curves.values() for p in c["points"]})
    head = "<tr><th>attack</th><th>images</th>" + "".join(f"<th>eps {esc(eps_text(e))}</th>" for e in eps) + "</tr>"
    rows = []
    for key, c in curves.items():
        acc = {p["eps"]: p["acc"] for p in c["points"]}
        rows.append(f"<tr><td>{esc(_label(key, c))}</td><td>{esc(str(c.get('images', '')))}</td>"
                    + "".join(f"<td>{fmt.pct(acc.get(e))}</td>" for e in eps) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"
