"""``write_report(run_dir)``: one self-contained ``report.html`` for a run folder.

Self-contained means it opens from disk, offline, forever: plots are inline base64 PNGs, CSS
is inline, there is no script and no external URL for anything the page loads.

The page is built from small section functions (the common ones here, the task's own from its
file in this folder, chosen by ``sections.report_for``), each run through ``_safe``: a section that
hits something unexpected in a half-written or hand-edited run folder becomes a visible error
box in the page, and the rest of the report is still written.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from . import fmt, plots
from .run_folder import RunData, atomic_write, get, headline, load_run
from .sections import Section, esc, img, kv, section
from .style import CSS

# The builders task files use too live in sections.py; the short names are kept for this file.
_img, _kv, _section = img, kv, section


def _safe(fn: Callable[[RunData], str], data: RunData, sid: str, title: str) -> str:
    """Run one section builder; on any error show what failed instead of losing the report."""
    try:
        return fn(data)
    except Exception as e:  # noqa: BLE001 - the report must be written whatever a file holds
        data.problems.append(f"section '{title}' could not be drawn ({type(e).__name__}: {e})")
        return _section(sid, title, "", f'<div class="empty">This section could not be drawn: '
                                        f'{esc(type(e).__name__)}: {esc(str(e))}</div>')


# ---------------------------------------------------------------------------------------------
# header, key numbers, notices


def _header(data: RunData) -> str:
    value, label = headline(data)
    shown = data.task.metric(data.task.headline).show(value, 2) if data.task.headline else fmt.DASH
    status = data.status
    rev = get(data.run, "git.rev")
    meta = [
        ("model", data.cfg("model.name")),
        ("data", data.cfg("data.name")),
        ("created", fmt.when(data.run["created"]) if data.run.get("created") else None),
        ("git", (str(rev)[:10] + (" (dirty)" if get(data.run, "git.dirty") else "")) if rev else None),
        ("seed", data.run.get("seed", data.cfg("seed"))),
    ]
    meta_html = "".join(f"<span>{esc(k)} <b>{esc(str(v))}</b></span>" for k, v in meta if v is not None)
    return f"""<header class="hero"><div class="wrap">
  <div><div class="eyebrow">visionsmith run report</div>
    <h1>{esc(data.name)}<span class="pill {esc(status)}">{esc(status.replace('_', ' '))}</span></h1>
    <div class="meta">{meta_html}</div></div>
  <div class="headline"><div class="big">{esc(shown)}</div>
    <div class="lbl">{esc(label)}</div></div>
</div></header>"""


def _scores(data: RunData) -> list[tuple[str, str, str]]:
    """The task's score cards: its own ``kpis`` hook, else one card per test metric (the best
    validation epoch's values while there is no test evaluation)."""
    t = data.task
    if t.kpis is not None:
        return t.kpis(data)
    ev = data.eval
    keys = t.test_keys or t.val_keys
    if ev or not data.val:
        return [(f"test {t.metric(k).short}", t.metric(k).show(ev.get(k)), t.metric(k).note) for k in keys]
    key = t.headline
    ranked = [r for r in data.val if fmt.is_num(r.get(key))]
    if not ranked:
        return [(f"val {t.metric(k).short}", fmt.DASH, "") for k in keys]
    pick = min if t.direction == "min" else max
    best = pick(ranked, key=lambda r: r[key])
    return [(f"val {t.metric(k).short}", t.metric(k).show(best.get(k)),
             f"best epoch {fmt.num(best.get('epoch'))}" if k == key else "at the best epoch") for k in keys]


def _kpis(data: RunData) -> str:
    timing = data.run.get("timing") if isinstance(data.run.get("timing"), dict) else {}
    last_train = next((r for r in reversed(data.train) if fmt.is_num(r.get("step"))), {})
    cards = _scores(data) + [
        ("parameters", fmt.count(get(data.run, "params.total")),
         f"{fmt.count(get(data.run, 'params.trainable'))} trainable ({fmt.num(get(data.run, 'params.trainable_pct'))}%)"
         f"{', ' + str(data.run['adapt']) if data.run.get('adapt', 'full') != 'full' else ''}"
         f"{', ' + str(data.run['method']) if data.run.get('method', 'supervised') != 'supervised' else ''}"
         if get(data.run, "params.total") else ""),
        ("train time", fmt.seconds(timing.get("train_s")),
         fmt.rate(timing.get("train_img_per_s")) + _compute_text(data.run, short=True)),
        ("steps", fmt.num(last_train.get("step")), f"epoch {fmt.num(last_train.get('epoch'))}"),
    ]
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
        f'<div class="s">{esc(s)}</div></div>' for k, v, s in cards) + "</div>"


def _notices(data: RunData) -> str:
    out = ""
    if data.missing:
        items = "".join(f"<li><code>{esc(f)}</code> is missing: no {esc(data.files.get(f, 'data'))}.</li>"
                        for f in data.missing)
        status = f" (status: <b>{esc(data.status)}</b>)" if data.run else ""
        out += (f'<div class="notice warn"><h2>This run folder is incomplete{status}</h2>'
                f"<ul>{items}</ul></div>")
    if data.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in data.problems)
        out += f'<div class="notice err"><h2>Problems reading the run folder</h2><ul>{items}</ul></div>'
    leaks = get(data.run, "data.leaks") if data.run else None
    for split, leak in (leaks.items() if isinstance(leaks, dict) else []):
        if not isinstance(leak, dict) or not leak.get("count"):
            continue
        ex = "".join(f"<li><code>{esc(str(e.get('image')))}</code> = training image <code>{esc(str(e.get('train')))}</code></li>"
                     for e in leak.get("examples", []) if isinstance(e, dict))
        out += (f'<div class="notice warn"><h2>{esc(fmt.num(leak["count"]))} of {esc(fmt.num(leak.get("of")))} '
                f"{esc(split)} images are also training images</h2><p>Identical pixels: the {esc(split)} score is "
                f"optimistic. Remove the duplicates from the data.</p><ul>{ex}</ul></div>")
    return out


# ---------------------------------------------------------------------------------------------
# sections


def _training(data: RunData) -> str:
    if not data.train and not data.val:
        why = "metrics.jsonl is missing" if not data.present.get("metrics.jsonl") else "metrics.jsonl has no train or val lines"
        return _section("training", "Training", "", f'<div class="empty">No training curves: {why}.</div>')
    t = data.task
    series = [(k, t.metric(k).label) for k in t.curve_keys]
    figs = [
        _img(plots.loss_curve(data.train, data.val), "loss curve", "No loss values logged."),
        _img(plots.val_curve(data.val, "kNN monitor per epoch (frozen features)" if data.knn
                             else "Validation metrics per epoch", series=series, best=t.direction,
                             legend=t.curve_legend),
             "validation metrics", "No validation lines logged yet."),
        _img(plots.lr_curve(data.train), "learning rate", "No learning rate logged."),
        _img(plots.throughput_curve(data.train), "throughput", "No throughput logged."),
    ]
    body = '<div class="grid2">' + "".join(figs) + "</div>"
    if data.val:
        knn = "kNN " if data.knn else ""
        cols = [(k, t.metric(k)) for k in t.val_keys]
        head = "<tr><th>epoch</th><th class=num>step</th>" + "".join(
            f"<th class=num>{esc((knn if m.knn else '') + m.short)}</th>" for _, m in cols) + "</tr>"
        rows = "".join(
            f"<tr><td>{esc(fmt.num(r.get('epoch')))}</td><td class=num>{esc(fmt.num(r.get('step')))}</td>"
            + "".join(f"<td class=num>{esc(m.show(r.get(k)))}</td>" for k, m in cols) + "</tr>" for r in data.val)
        body += f"<details><summary>Validation per epoch ({len(data.val)})</summary><table>{head}{rows}</table></details>"
    sub = f"{len(data.train)} train log lines, {len(data.val)} validation epochs. " \
          "Train loss is drawn raw (faint) and smoothed."
    if data.knn:
        sub += (f" Self-supervised ({data.run.get('method') or data.cfg('method')}): the labels are used only by the "
                "kNN monitor, which classifies each val image by a vote of its most similar training images "
                "in the frozen feature space.")
    return _section("training", "Training", esc(sub), body)


def _compute_text(run: dict, short: bool = False) -> str:
    """Achieved training GFLOP/s and its share of the measured matmul peak (run.json ``timing`` and ``flops``,
    engine/flops.py); '' for runs that predate them."""
    timing = run.get("timing") if isinstance(run.get("timing"), dict) else {}
    flops = run.get("flops") if isinstance(run.get("flops"), dict) else {}
    got, peak, share = (timing.get(k) for k in ("train_gflop_per_s", "matmul_peak_gflop_per_s", "share_of_peak"))
    if not fmt.is_num(got):
        return "" if short or not flops else f"not measured: {flops.get('reason') or 'no training step'}"
    if short:
        return f", {fmt.num(got, 3)} GFLOP/s" + (f" ({fmt.pct(share, 1)} of peak)" if fmt.is_num(share) else "")
    mp = flops.get("matmul_peak") if isinstance(flops.get("matmul_peak"), dict) else {}
    return (f"{fmt.num(got, 3)} GFLOP/s achieved"
            + (f" = {fmt.pct(share, 1)} of the measured {mp.get('dtype', '')} matmul peak ({fmt.num(peak, 3)} GFLOP/s, "
               f"{mp.get('threads', '?')} thread{'' if mp.get('threads') == 1 else 's'})" if fmt.is_num(share) else "")
            + (f"; {fmt.num(flops['train_flop_per_image'] / 1e6, 4)} MFLOP per training image"
               if fmt.is_num(flops.get("train_flop_per_image")) else ""))


def _details(data: RunData) -> str:
    run = data.run
    if not run:
        return _section("details", "Run details", "", '<div class="empty">run.json is missing: no environment, '
                        "timing, parameter count or git revision recorded.</div>")
    env = run.get("env") if isinstance(run.get("env"), dict) else {}
    timing = run.get("timing") if isinstance(run.get("timing"), dict) else {}
    git = run.get("git") if isinstance(run.get("git"), dict) else {}
    env_t = _kv([(k, esc(str(v))) for k, v in env.items()]) if env else '<div class="empty">not recorded</div>'
    timing_t = _kv([
        ("training", esc(fmt.seconds(timing.get("train_s")))),
        ("evaluation", esc(fmt.seconds(timing.get("eval_s")))),
        ("train throughput", esc(fmt.rate(timing.get("train_img_per_s")))),
        ("train compute", esc(_compute_text(run) or fmt.DASH)),
        ("eval throughput", esc(fmt.rate(timing.get("eval_img_per_s")))),
    ] + [(k, esc(str(v))) for k, v in timing.items()
         if k not in ("train_s", "eval_s", "train_img_per_s", "eval_img_per_s", "train_gflop_per_s",
                      "matmul_peak_gflop_per_s", "share_of_peak")])
    run_t = _kv([
        ("name", esc(data.name)),
        ("status", esc(data.status)),
        ("created", esc(fmt.when(run.get("created")))),
        ("seed", esc(str(run.get("seed", fmt.DASH)))),
        ("git revision", f"<code>{esc(str(git.get('rev', fmt.DASH)))}</code>"
                         + (' <b class="no">dirty</b>' if git.get("dirty") else "")),
        ("parameters", esc(f"{fmt.num(get(run, 'params.total'))} total, "
                           f"{fmt.num(get(run, 'params.trainable'))} trainable")),
    ] + _overlap_rows(run))
    cmd = run.get("command")
    cmd_html = f"<h3>Command</h3><pre>{esc(str(cmd))}</pre>" if cmd else ""
    if run.get("resumed_by"):
        cmd_html += f"<p class=\"sub\">last resumed with <code>{esc(str(run['resumed_by']))}</code></p>"
    body = (f'<div class="grid2"><div><h3>Run</h3>{run_t}<h3>Timing</h3>{timing_t}</div>'
            f"<div><h3>Environment</h3>{env_t}</div></div>{cmd_html}")
    return _section("details", "Run details", "What this result is tied to: code revision, seed, "
                    "environment and the exact command.", body)


def _overlap_rows(run: dict) -> list[tuple[str, str]]:
    """'test images also in train': the leak check's count per split (runs before it: no row)."""
    leaks = get(run, "data.leaks")
    return [(f"{split} images also in train", esc(f"{fmt.num(v.get('count'))} of {fmt.num(v.get('of'))}"))
            for split, v in (leaks.items() if isinstance(leaks, dict) else []) if isinstance(v, dict)]


def _config(data: RunData) -> str:
    if not data.config_text:
        return _section("config", "Config", "", '<div class="empty">config.yaml is missing.</div>')
    lines = data.config_text.count("\n") + 1
    return _section("config", "Config", "The resolved config this run was made with.",
                    f"<details><summary>config.yaml ({lines} lines)</summary><pre>{esc(data.config_text)}</pre></details>")


def _files(data: RunData) -> str:
    items = []
    for fname, what in data.files.items():
        if not data.present.get(fname) and fname in data.file_notes:
            mark = '<span class="ok">\u2713</span>'
            what = data.file_notes[fname]
        elif data.present.get(fname):
            mark = '<span class="ok">\u2713</span>'
        elif fname in data.optional:
            mark = '<span class="opt">\u2013</span>'
        else:
            mark = '<span class="no">\u2717</span>'
        items.append(f"<div>{mark} <code>{esc(fname)}</code> <span style='color:var(--muted)'>{esc(what)}</span></div>")
    return _section("files", "Run folder", f"<code>{esc(str(data.run_dir))}</code>",
                    f'<div class="files">{"".join(items)}</div>')


def _distillation(data: RunData) -> str:
    """Teacher and distilled student side by side (accuracy, parameters, images/s); only for distill runs."""
    import json

    if data.cfg("method") != "distill":
        return ""
    src = str(data.cfg("distill.teacher", ""))
    tdir = Path(src)

    def read(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    t_run, t_eval = (read(tdir / "run.json"), read(tdir / "eval.json")) if tdir.is_dir() else ({}, {})
    key = data.task.headline or ""
    m = data.task.metric(key)
    head = f"<tr><th></th><th>model</th><th>test {esc(m.short)}</th><th>parameters</th><th>eval img/s</th></tr>"
    row = lambda who, model, ev, run: (  # noqa: E731
        f"<tr><td>{esc(who)}</td><td>{esc(str(model))}</td><td>{esc(m.show(ev.get(key)))}</td>"
        f"<td>{fmt.count(get(run, 'params.total'))}</td><td>{fmt.rate(get(run, 'timing.eval_img_per_s'))}</td></tr>")
    body = (f'<table>{head}'
            f"{row('teacher', _teacher_model(tdir) or src, t_eval, t_run)}"
            f"{row('this student', data.cfg('model.name'), data.eval, data.run)}</table>")
    sub = (f"{esc(str(data.cfg('distill.kind')))} distillation, T = {esc(str(data.cfg('distill.temperature')))}, "
           f"alpha = {esc(str(data.cfg('distill.alpha')))}; teacher <code>{esc(src)}</code>. The same student "
           "trained alone on the same budget is the other half of the comparison: <code>visionsmith compare "
           "recipes/compare-adaptation.yaml</code> trains both.")
    return _section("distillation", "Distillation", sub, body)


def _robustness(data: RunData) -> str:
    """Accuracy against epsilon for every attack run on this folder (``visionsmith robustness``)."""
    from .robustness import read_curves, robustness_plot, robustness_table

    curves = read_curves(data.run_dir)
    if not curves:
        return ""
    adv = data.cfg("adversarial", {}) if data.cfg("method") == "adversarial" else {}
    how = (f"Trained adversarially: {esc(str(adv.get('kind', '')).upper())}, eps {esc(str(adv.get('eps')))} "
           f"({esc(str(adv.get('norm')))}). " if adv else "Trained without attacks. ")
    sub = (how + "eps is a fraction of the [0, 1] pixel range (the model's normalisation is inside the "
           "attacked function); eps 0 is clean accuracy. Add curves with <code>visionsmith robustness RUN "
           "--attack pgd --eps 0,0.05,0.1</code>.")
    return _section("robustness", "Robustness", sub,
                    _img(robustness_plot(curves), "accuracy against epsilon", "no curve") + robustness_table(curves))


def _pruning(data: RunData) -> str:
    """What pruning removed and what it cost and bought (``prune.json`` of ``visionsmith prune``)."""
    import json

    try:
        p = json.loads((data.run_dir / "prune.json").read_text())
        row, base = p["row"], p["baseline"]
    except (OSError, ValueError, KeyError):
        return ""
    what = "output channels (the model is smaller)" if p.get("kind") == "structured" else \
        "weights, zeroed in place (same size and speed with dense kernels)"
    sub = (f"{fmt.pct(p.get('amount'), 0)} of the {what}, from <code>{esc(str(p.get('source')))}</code>; "
           f"fine-tuned {esc(str(p.get('finetune_epochs')))} epoch(s). Speeds were timed side by side in one process.")
    rows = [("accuracy", fmt.pct(base.get("acc")), f"{fmt.pct(row.get('acc'))} (before fine-tune "
                                                   f"{fmt.pct(row.get('acc_before_ft'))})"),
            ("parameters", fmt.count(base.get("params")), fmt.count(row.get("params"))),
            ("zero parameters", fmt.pct(base.get("zeros"), 1), fmt.pct(row.get("zeros"), 1)),
            ("MACs per image", fmt.count(base.get("macs")), fmt.count(row.get("macs"))),
            ("forward img/s", fmt.rate(base.get("img_per_s")), fmt.rate(row.get("img_per_s")))]
    body = "<table><tr><th></th><th>before pruning</th><th>this run</th></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{a}</td><td>{b}</td></tr>" for k, a, b in rows) + "</table>"
    return _section("pruning", "Pruning", sub, body)


def _teacher_model(tdir: Path) -> str:
    import yaml

    try:
        return str((yaml.safe_load((tdir / "config.yaml").read_text()) or {}).get("model", {}).get("name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


# The page: the training curves, the task's sections (``TaskReport.section``; ``late`` ones after
# the method sections), the method sections (empty unless the run has them), then the run's details.
FIRST = [Section("training", "Training", _training)]
METHODS = [Section("distillation", "Distillation", _distillation), Section("robustness", "Robustness", _robustness),
           Section("pruning", "Pruning", _pruning)]
LAST = [Section("details", "Run details", _details), Section("config", "Config", _config),
        Section("files", "Files", _files)]


def page_sections(data: RunData) -> list[Section]:
    """The sections of ``data``'s page, in order."""
    t = data.task
    return FIRST + t.early() + METHODS + t.late() + LAST


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("visionsmith")
    except Exception:  # noqa: BLE001 - not installed as a distribution: fine
        return "dev"


def render_report(data: RunData) -> str:
    """The full HTML page for ``data`` as a string."""
    built = [(s.sid, s.title, _safe(s.fn, data, s.sid, s.title)) for s in page_sections(data)]
    sections = "".join(html for _, _, html in built)
    # Header, KPIs and notices come after the sections are built so that problems found while
    # drawing a section are listed in the notice at the top too.
    header = _safe(_header, data, "header", "Header")
    kpis = _safe(_kpis, data, "kpis", "Key numbers")
    notices = _notices(data)
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, html in built if html)  # drawn ones only
    now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(data.name)} \u00b7 visionsmith report</title>
<style>{CSS}</style></head>
<body>
{header}
<nav class="toc"><div class="wrap">{nav}</div></nav>
<main><div class="wrap">
{notices}
{kpis}
{sections}
</div></main>
<footer>visionsmith {esc(_version())} \u00b7 report written {esc(fmt.when(now))} \u00b7 self-contained: opens offline</footer>
</body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from whatever the run folder holds; returns its path.

    Never fails because of the folder's content: absent files and unreadable lines are listed
    at the top of the page. The file is written atomically (temp file + rename), so a reader
    never sees half a report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    data = load_run(run_dir)
    page = render_report(data)
    return atomic_write(run_dir / "report.html", page)
