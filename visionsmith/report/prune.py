"""The table, plot and page of a pruning sweep (``visionsmith prune RUN --sweep ...``).

Rows (``workflows/prune.py``) are dicts with: name, kind, amount, acc, acc_before_ft, params, zeros,
macs, size_bytes, img_per_s, speedup, finetune_s; the first row is the unpruned run.  Writes
``sweep.md``, ``sweep.png`` and ``sweep.html`` next to the ``sweep.json`` the engine wrote.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure

from . import fmt
from .plots import ACCENT, AMBER, INK, MUTED, ROSE, SLATE, STYLE, TEAL, _png, css_width
from .style import CSS

COLUMNS = ["point", "acc", "before fine-tune", "acc change", "params", "zero params", "MACs/image",
           "weight file", "img/s (1 thread)", "speed-up", "fine-tune"]


def _cells(r: dict, base: dict) -> list[str]:
    rel = lambda k: f" ({100 * r[k] / base[k]:.0f}%)" if fmt.is_num(r.get(k)) and base.get(k) else ""  # noqa: E731
    delta = r["acc"] - base["acc"] if fmt.is_num(r.get("acc")) and r is not base else None
    return [r.get("name", fmt.DASH), fmt.fixed(r.get("acc"), 4), fmt.fixed(r.get("acc_before_ft"), 4),
            f"{100 * delta:+.2f} pt" if delta is not None else fmt.DASH,
            fmt.count(r.get("params")) + rel("params"), fmt.pct(r.get("zeros"), 1),
            fmt.count(r.get("macs")) + rel("macs"),
            (f"{r['size_bytes'] / 1024:,.0f} KiB" if fmt.is_num(r.get("size_bytes")) else fmt.DASH),
            f"{r['img_per_s']:,.0f}" if fmt.is_num(r.get("img_per_s")) else fmt.DASH,
            f"{r['speedup']:.2f}x" if fmt.is_num(r.get("speedup")) else fmt.DASH,
            fmt.seconds(r.get("finetune_s"))]


def table_markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|\n"
    return head + "".join("| " + " | ".join(_cells(r, rows[0])) + " |\n" for r in rows)


def sweep_plot(rows: list[dict], kind: str) -> str | None:
    """Left: accuracy against the amount pruned (after and before the fine-tune, the unpruned run
    dashed).  Right: parameters, MACs and forward speed relative to the unpruned run."""
    base, pts = rows[0], sorted(rows[1:], key=lambda r: r["amount"])
    if not pts:
        return None
    xs = [100 * r["amount"] for r in pts]
    with rc_context(STYLE):
        fig = Figure(figsize=(10, 3.6))
        ax, ax2 = fig.subplots(1, 2, gridspec_kw={"wspace": 0.25})
        ax.axhline(base["acc"], color=SLATE, ls="--", lw=1, label=f"unpruned {base['acc']:.4f}")
        # Both curves start at the unpruned run (amount 0).
        ax.plot([0] + xs, [base["acc"]] + [r["acc"] for r in pts], "o-", color=ACCENT, label="pruned + fine-tuned")
        if any(fmt.is_num(r.get("acc_before_ft")) for r in pts):
            ax.plot([0] + xs, [base["acc"]] + [r.get("acc_before_ft") for r in pts], "s:", color=AMBER,
                    label="pruned, before fine-tune")
        ax.set_xlabel(f"amount pruned (% of {'channels' if kind == 'structured' else 'weights'} per layer)")
        ax.set_title(f"{base.get('split', 'test')} accuracy")
        ax.legend(loc="lower left")
        for key, colour, label in (("params", TEAL, "parameters"), ("macs", ROSE, "MACs / image"),
                                   ("img_per_s", ACCENT, "forward img/s")):
            if base.get(key):
                ax2.plot([0] + xs, [1.0] + [r[key] / base[key] for r in pts], "o-", color=colour, label=label)
        if kind == "unstructured":
            ax2.plot([0] + xs, [0.0] + [r.get("zeros", 0) for r in pts], "s:", color=AMBER, label="zero fraction")
        ax2.axhline(1.0, color=SLATE, ls="--", lw=1)
        ax2.set_xlabel("amount pruned (%)")
        ax2.set_title("relative to the unpruned run")
        ax2.legend(loc="best")
        fig.suptitle(f"{kind.capitalize()} pruning sweep", x=0.01, ha="left", fontsize=11, fontweight="bold", color=INK)
        note = ("unstructured pruning keeps dense shapes: size and speed stay those of the unpruned model"
                if kind == "unstructured" else "speed: forward passes of batch 64 on 1 thread, timed together on this machine")
        fig.text(0.01, -0.04, note, fontsize=8, color=MUTED)
        return _png(fig)


def _html(title: str, command: str, rows: list[dict], png: str | None, notes: list[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r, rows[0])) + "</tr>" for r in rows)
    img = (f'<figure><img alt="sweep plot" width="{css_width(png)}" src="data:image/png;base64,{png}"></figure>'
           if png else "")
    paras = "".join(f"<p>{esc(n)}</p>" for n in notes)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><header class="hero"><div class="wrap"><div>'
            f'<div class="eyebrow">visionsmith prune</div><h1>{esc(title)}</h1>'
            f'<div class="meta"><code>{esc(command)}</code></div></div></div></header><main><div class="wrap">'
            f'<section class="card"><h2>Accuracy, size and speed</h2>{img}</section>'
            f'<section class="card"><h2>Table</h2><table><tr>{head}</tr>{body}</table>{paras}</section>'
            f"</div></main></body></html>")


def notes_for(sweep: dict) -> list[str]:
    kind = sweep.get("kind")
    n = [f"Each point prunes {sweep.get('source')} and fine-tunes it {sweep.get('finetune_epochs')} epoch(s) with "
         "the run's own recipe; accuracy on the same split for every row."]
    if kind == "unstructured":
        n.append("Unstructured pruning zeroes single weights but keeps every tensor dense: parameter count, file "
                 "size and speed stay those of the unpruned model (the zeros would need a sparse format or "
                 "sparse kernels to pay off). Structured pruning (--structured) removes whole channels.")
    else:
        n.append("Structured pruning removes whole channels (torch-pruning's dependency graph keeps residual "
                 "adds and depthwise convs consistent): the model really is smaller and does less work.")
    return n


def write_sweep(folder: str | Path, sweep: dict, command: str) -> dict[str, Path]:
    """``sweep.md``, ``sweep.png`` and ``sweep.html`` in ``folder`` from the engine's ``sweep.json``
    contents; returns their paths."""
    folder = Path(folder)
    rows, kind = sweep["rows"], sweep.get("kind", "structured")
    title = f"{kind.capitalize()} pruning sweep of {Path(str(sweep.get('source'))).name}"
    png = sweep_plot(rows, kind)
    notes = notes_for(sweep)
    out = {"md": folder / "sweep.md", "html": folder / "sweep.html"}
    md = f"# {title}\n\n`{command}`\n\n{table_markdown(rows)}\n" + "".join(f"{n}\n\n" for n in notes)
    if png:
        out["png"] = folder / "sweep.png"
        out["png"].write_bytes(base64.b64decode(png))
        md += "![sweep](sweep.png)\n"
    out["md"].write_text(md)
    out["html"].write_text(_html(title, command, rows, png, notes))
    return out
