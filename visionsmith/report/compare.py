"""The trade-off table and plot of ``visionsmith compare``: one row per run.

Rows are dicts with: name, acc, trainable, total, train_s, train_img_per_s, eval_img_per_s,
peak_mem_mb, model, adapt, method.  Writes ``compare.md`` (table), ``compare.png`` (plot) and
``compare.json`` (rows) into the comparison folder.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from .plots import ACCENT, AMBER, INK, MUTED, STYLE, TEAL, _png

COLUMNS = [("run", "name"), ("model", "model"), ("mode", "mode"), ("test acc", "acc"),
           ("trainable params", "trainable"), ("trainable %", "trainable_pct"), ("train time", "train_s"),
           ("train img/s", "train_img_per_s"), ("eval img/s", "eval_img_per_s"), ("peak mem (MB)", "peak_mem_mb")]


def _cell(key: str, v) -> str:
    if v is None:
        return fmt.DASH
    if key == "acc":
        return f"{v:.4f}"
    if key == "trainable":
        return f"{int(v):,}"
    if key == "trainable_pct":
        return f"{v:.2f}"
    if key == "train_s":
        return fmt.seconds(v)
    if key in ("train_img_per_s", "eval_img_per_s", "peak_mem_mb"):
        return f"{v:,.0f}"
    return str(v)


def table_markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|\n"
    return head + "".join("| " + " | ".join(_cell(k, r.get(k)) for _, k in COLUMNS) + " |\n" for r in rows)


def plot_tradeoffs(rows: list[dict]) -> str | None:
    """Three panels sharing the run order: test accuracy, trainable parameters (log), train time."""
    rows = [r for r in rows if r.get("acc") is not None]
    if not rows:
        return None
    names = [r["name"] for r in rows][::-1]  # top to bottom in table order
    get = lambda k: [r.get(k) or 0 for r in rows][::-1]  # noqa: E731
    with rc_context(STYLE):
        fig = Figure(figsize=(10.5, 0.42 * len(rows) + 1.3))
        axes = fig.subplots(1, 3, sharey=True, gridspec_kw={"wspace": 0.08})
        panels = [("test accuracy", get("acc"), ACCENT, lambda v: f"{v:.3f}"),
                  ("trainable parameters (log)", get("trainable"), TEAL, lambda v: fmt.count(v)),
                  ("train time (min)", [v / 60 for v in get("train_s")], AMBER, lambda v: f"{v:.1f}")]
        for ax, (title, vals, colour, label) in zip(axes, panels):
            ax.barh(names, vals, color=colour, height=0.6)
            ax.set_title(title)
            ax.grid(axis="y", visible=False)
            for y, v in enumerate(vals):
                ax.text(v, y, " " + label(v), va="center", fontsize=8, color=INK)
        accs = get("acc")
        lo = min(accs)
        axes[0].set_xlim(max(0.0, lo - (1 - lo) * 0.6), 1.0)
        axes[1].set_xscale("log")
        axes[1].set_xlim(min(v for v in get("trainable") if v > 0) / 2, max(get("trainable")) * 20)
        axes[2].set_xlim(0, max(v / 60 for v in get("train_s")) * 1.3 or 1)
        axes[0].tick_params(axis="y", colors=INK)
        fig.suptitle("Adaptation trade-offs", x=0.01, ha="left", fontsize=11, fontweight="bold", color=INK)
        fig.text(0.01, -0.02, "bars in table order; each run's settings: the spec's overrides and its run "
                 "folder's config.yaml", fontsize=8, color=MUTED)
        return _png(fig)


def write_comparison(folder: Path, rows: list[dict], title: str, command: str) -> dict[str, Path]:
    """Write the table, plot and rows into ``folder``; returns their paths."""
    folder = Path(folder)
    table = table_markdown(rows)
    png = plot_tradeoffs(rows)
    out = {"json": folder / "compare.json", "md": folder / "compare.md"}
    out["json"].write_text(json.dumps({"title": title, "command": command, "rows": rows}, indent=2))
    md = f"# {title}\n\n`{command}`\n\n{table}"
    if png:
        out["png"] = folder / "compare.png"
        out["png"].write_bytes(base64.b64decode(png))
        md += "\n![trade-offs](compare.png)\n"
    out["md"].write_text(md)
    return out
