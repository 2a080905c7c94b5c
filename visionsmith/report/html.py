"""``write_report(run_dir)``: one self-contained ``report.html`` for a run folder.

Self-contained means it opens from disk, offline, forever: plots are inline base64 PNGs, CSS
is inline, there is no script and no external URL for anything the page loads.

The page is built from small section functions, each run through ``_safe``: a section that
hits something unexpected in a half-written or hand-edited run folder becomes a visible error
box in the page, and the rest of the report is still written.
"""
from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from pathlib import Path

from . import fmt, plots
from .published import DEFAULT_PICKS
from .run_folder import FILES, OPTIONAL, RunData, atomic_write, get, headline, load_run
from .style import CSS

esc = html.escape


# ---------------------------------------------------------------------------------------------
# small HTML builders


def _img(b64: str | None, alt: str, empty: str) -> str:
    if b64 is None:
        return f'<div class="empty">{esc(empty)}</div>'
    return (f'<figure><img alt="{esc(alt)}" width="{plots.css_width(b64)}" '
            f'src="data:image/png;base64,{b64}"></figure>')


def _kv(rows: list[tuple[str, str]]) -> str:
    """Two-column key/value table; values are already escaped HTML."""
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _section(sid: str, title: str, sub: str, body: str) -> str:
    sub_html = f'<p class="sub">{sub}</p>' if sub else ""
    return f'<section class="card" id="{sid}"><h2>{esc(title)}</h2>{sub_html}{body}</section>'


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
    acc, label = headline(data)
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
  <div class="headline"><div class="big">{fmt.pct(acc, 2) if acc is not None else fmt.DASH}</div>
    <div class="lbl">{esc(label)}</div></div>
</div></header>"""


def _kpis(data: RunData) -> str:
    ev, timing = data.eval, data.run.get("timing") if isinstance(data.run.get("timing"), dict) else {}
    last_train = next((r for r in reversed(data.train) if fmt.is_num(r.get("step"))), {})
    knn = "kNN " if data.knn else ""
    if ev or not data.val:
        scores = [
            (f"{knn}test acc", fmt.pct(ev.get("acc")), f"top-5 {fmt.pct(ev.get('top5'))}"),
            ("macro-F1", fmt.num(ev.get("macro_f1"), 3), "mean over classes"),
            ("test loss", fmt.num(ev.get("loss"), 3), "kNN vote cross-entropy" if knn else "cross-entropy"),
        ]
    else:  # not evaluated yet: lead with the best validation epoch rather than three dashes
        best = max(data.val, key=lambda r: r.get("acc") if fmt.is_num(r.get("acc")) else -1)
        scores = [
            (f"val {knn}acc", fmt.pct(best.get("acc")), f"best epoch {fmt.num(best.get('epoch'))}, "
                                                   f"top-5 {fmt.pct(best.get('top5'))}"),
            ("val macro-F1", fmt.num(best.get("macro_f1"), 3), "at the best epoch"),
            ("val loss", fmt.num(best.get("loss"), 3), "at the best epoch"),
        ]
    cards = scores + [
        ("parameters", fmt.count(get(data.run, "params.total")),
         f"{fmt.count(get(data.run, 'params.trainable'))} trainable ({fmt.num(get(data.run, 'params.trainable_pct'))}%)"
         f"{', ' + str(data.run['adapt']) if data.run.get('adapt', 'full') != 'full' else ''}"
         f"{', ' + str(data.run['method']) if data.run.get('method', 'supervised') != 'supervised' else ''}"
         if get(data.run, "params.total") else ""),
        ("train time", fmt.seconds(timing.get("train_s")), fmt.rate(timing.get("train_img_per_s"))),
        ("steps", fmt.num(last_train.get("step")), f"epoch {fmt.num(last_train.get('epoch'))}"),
    ]
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
        f'<div class="s">{esc(s)}</div></div>' for k, v, s in cards) + "</div>"


def _notices(data: RunData) -> str:
    out = ""
    if data.missing:
        items = "".join(f"<li><code>{esc(f)}</code> is missing: no {esc(FILES[f])}.</li>" for f in data.missing)
        status = f" (status: <b>{esc(data.status)}</b>)" if data.run else ""
        out += (f'<div class="notice warn"><h2>This run folder is incomplete{status}</h2>'
                f"<ul>{items}</ul></div>")
    if data.problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in data.problems)
        out += f'<div class="notice err"><h2>Problems reading the run folder</h2><ul>{items}</ul></div>'
    return out


# ---------------------------------------------------------------------------------------------
# sections


def _training(data: RunData) -> str:
    if not data.train and not data.val:
        why = "metrics.jsonl is missing" if not data.present.get("metrics.jsonl") else "metrics.jsonl has no train or val lines"
        return _section("training", "Training", "", f'<div class="empty">No training curves: {why}.</div>')
    figs = [
        _img(plots.loss_curve(data.train, data.val), "loss curve", "No loss values logged."),
        _img(plots.val_curve(data.val, "kNN monitor per epoch (frozen features)" if data.knn
                             else "Validation metrics per epoch"), "validation metrics", "No validation lines logged yet."),
        _img(plots.lr_curve(data.train), "learning rate", "No learning rate logged."),
        _img(plots.throughput_curve(data.train), "throughput", "No throughput logged."),
    ]
    body = '<div class="grid2">' + "".join(figs) + "</div>"
    if data.val:
        knn = "kNN " if data.knn else ""
        head = f"<tr><th>epoch</th><th class=num>step</th><th class=num>{knn}acc</th><th class=num>{knn}top-5</th>" \
               f"<th class=num>{knn}macro-F1</th><th class=num>loss</th></tr>"
        rows = "".join(
            f"<tr><td>{esc(fmt.num(r.get('epoch')))}</td><td class=num>{esc(fmt.num(r.get('step')))}</td>"
            f"<td class=num>{fmt.pct(r.get('acc'))}</td><td class=num>{fmt.pct(r.get('top5'))}</td>"
            f"<td class=num>{esc(fmt.num(r.get('macro_f1'), 3))}</td>"
            f"<td class=num>{esc(fmt.num(r.get('loss'), 3))}</td></tr>" for r in data.val)
        body += f"<details><summary>Validation per epoch ({len(data.val)})</summary><table>{head}{rows}</table></details>"
    sub = f"{len(data.train)} train log lines, {len(data.val)} validation epochs. " \
          "Train loss is drawn raw (faint) and smoothed."
    if data.knn:
        sub += (f" Self-supervised ({data.run.get('method') or data.cfg('method')}): the labels are used only by the "
                "kNN monitor, which classifies each val image by a vote of its most similar training images "
                "in the frozen feature space.")
    return _section("training", "Training", esc(sub), body)


def _per_class_table(ev: dict, classes: list[str]) -> str:
    pc = ev.get("per_class") or {}
    p, r, f1, sup = (pc.get(k) or [] for k in ("precision", "recall", "f1", "support"))
    k = min(len(p), len(r), len(f1), len(sup))
    if not k:
        return ""
    worst = min(range(k), key=lambda i: f1[i] if fmt.is_num(f1[i]) else 1)
    rows = ""
    for i in range(k):
        name = classes[i] if i < len(classes) else str(i)
        w = 100 * f1[i] if fmt.is_num(f1[i]) else 0
        low = " low" if i == worst else ""
        rows += (f"<tr><td>{esc(name)}</td><td class=num>{fmt.fixed(p[i])}</td>"
                 f"<td class=num>{fmt.fixed(r[i])}</td><td class=num>{fmt.fixed(f1[i])}"
                 f'<span class="bar{low}"><span style="width:{w:.1f}%"></span></span></td>'
                 f"<td class=num>{esc(fmt.num(sup[i]))}</td></tr>")
    head = "<tr><th>class</th><th class=num>precision</th><th class=num>recall</th>" \
           "<th class=num>F1</th><th class=num>support</th></tr>"
    return f"<h3>Per class</h3><table>{head}{rows}</table>"


def _confused_pairs(ev: dict, classes: list[str], top: int = 5) -> str:
    """The largest off-diagonal cells of the confusion matrix: where the model goes wrong most."""
    cm = ev.get("confusion")
    if not isinstance(cm, list) or not cm:
        return ""
    k = len(cm)
    name = lambda i: classes[i] if i < len(classes) else str(i)  # noqa: E731
    support = [sum(row) for row in cm]
    cells = sorted(((cm[i][j], i, j) for i in range(k) for j in range(len(cm[i])) if i != j and cm[i][j]),
                   reverse=True)[:top]
    if not cells:
        return ""
    rows = "".join(f"<tr><td>{esc(name(i))} \u2192 {esc(name(j))}</td><td class=num>{c:,}</td>"
                   f"<td class=num>{fmt.pct(c / support[i] if support[i] else None, 1)}</td></tr>"
                   for c, i, j in cells)
    return ("<h3>Most confused pairs</h3><table><tr><th>true \u2192 predicted</th><th class=num>images</th>"
            f"<th class=num>of the true class</th></tr>{rows}</table>")


def _evaluation(data: RunData) -> str:
    ev = data.eval
    if not ev:
        why = "eval.json is missing" if not data.present.get("eval.json") else "eval.json could not be read"
        return _section("evaluation", "Test evaluation", "",
                        f'<div class="empty">No test evaluation: {why}. The run has not been '
                        f"evaluated on the test split yet; the headline shows validation accuracy instead.</div>")
    classes = data.classes
    knn = data.knn
    table = _kv([
        ("split", esc(str(ev.get("split", "test")))),
        ("images", esc(fmt.num(ev.get("n")))),
        ("kNN accuracy (top-1)" if knn else "accuracy (top-1)", fmt.pct(ev.get("acc"))),
        ("top-5 accuracy", fmt.pct(ev.get("top5"))),
        ("macro-F1", esc(fmt.num(ev.get("macro_f1"), 4))),
        ("loss (kNN vote cross-entropy)" if knn else "loss (cross-entropy)", esc(fmt.num(ev.get("loss"), 4))),
        ("evaluation speed", esc(fmt.rate(ev.get("eval_img_per_s")))),
    ] + ([("kNN", esc(f"k={ev.get('knn_k')}, cosine, bank of {fmt.num(ev.get('knn_bank'))} train images"))]
         if knn else []))
    cm = _img(plots.confusion(ev.get("confusion") or [], classes), "confusion matrix",
              "No confusion matrix in eval.json.")
    bars = _img(plots.per_class_bars(ev.get("per_class") or {}, classes), "precision and recall per class",
                "No per-class scores in eval.json.")
    body = (f'<div class="grid2"><div><h3>Headline</h3>{table}{_confused_pairs(ev, classes)}</div><div>{cm}</div>'
            f"<div>{_per_class_table(ev, classes)}</div><div><h3>&nbsp;</h3>{bars}</div></div>")
    if knn:
        return _section("evaluation", "Test evaluation", "A self-supervised backbone has no trained classifier: "
                        "each test image is classified by a weighted vote of its k most similar training images "
                        "in the frozen feature space (rows of the confusion matrix are the true class). For a "
                        "linear probe, train <code>method=supervised adapt.mode=linear "
                        "model.pretrained=&lt;this run folder&gt;</code>.", body)
    return _section("evaluation", "Test evaluation", "Metrics on the held-out test split, computed once "
                    "after training (rows of the confusion matrix are the true class).", body)


def _mistakes(data: RunData) -> str:
    z, classes = data.worst_images, data.classes
    worst = data.eval.get("worst") if isinstance(data.eval.get("worst"), list) else []
    if all(k in z for k in ("images", "labels", "preds", "confidence")) and len(z["images"]):
        body = _img(plots.mistakes_grid(z["images"], z["labels"], z["preds"], z["confidence"], classes),
                    "worst mistakes", "")
        return _section("mistakes", "Most confident mistakes",
                        "Test images the model got wrong with the highest confidence in the wrong class: "
                        "<b>true \u2192 predicted</b>, with the confidence in the predicted class below each image.", f'<div class="center">{body}</div>')
    if worst:  # no images, but the list is there: show it as a table
        name = lambda i: classes[i] if isinstance(i, int) and 0 <= i < len(classes) else str(i)  # noqa: E731
        rows = "".join(f"<tr><td class=num>{esc(fmt.num(w.get('index')))}</td><td>{esc(name(w.get('label')))}</td>"
                       f"<td>{esc(name(w.get('pred')))}</td><td class=num>{fmt.num(w.get('confidence'), 3)}</td></tr>"
                       for w in worst if isinstance(w, dict))
        note = "eval_worst.npz is missing, so the images cannot be shown" if not data.present.get("eval_worst.npz") \
            else "eval_worst.npz has no usable images"
        return _section("mistakes", "Most confident mistakes", esc(note) + ".",
                        "<table><tr><th class=num>test index</th><th>true</th><th>predicted</th>"
                        f"<th class=num>confidence</th></tr>{rows}</table>")
    why = "eval.json is missing" if not data.eval else "no mistakes recorded (eval.json has no 'worst' list and " \
                                                        "eval_worst.npz is missing)"
    return _section("mistakes", "Most confident mistakes", "", f'<div class="empty">Nothing to show: {esc(why)}.</div>')


def _select_published(rows: list[dict], acc: float, picks=DEFAULT_PICKS, limit: int = 15) -> list[dict]:
    """A readable subset of a long table: the named picks, the top 4 and the neighbours of ``acc``."""
    rows = sorted(rows, key=lambda r: -float(r["acc"]))
    if len(rows) <= limit:
        return rows
    keep = {id(r) for r in rows[:4]} | {id(r) for r in rows if r.get("name") in picks}
    below = [r for r in rows if r["acc"] < acc][:3]
    above = [r for r in rows if r["acc"] >= acc][-3:]
    keep |= {id(r) for r in below + above}
    return [r for r in rows if id(r) in keep]


def _published(data: RunData) -> str:
    if data.knn:
        return _section("published", "Compared with published results", "",
                        '<div class="empty">Not compared: published results are trained classifiers, and this '
                        "self-supervised run's accuracy is a kNN vote on frozen features. Compare its linear probe "
                        "(<code>adapt.mode=linear model.pretrained=&lt;this run folder&gt;</code>) instead.</div>")
    acc = data.eval.get("acc")
    rows = [r for r in data.published if fmt.is_num(r.get("acc"))]
    if not rows:
        return _section("published", "Compared with published results", "",
                        '<div class="empty">No published results to compare with: add a '
                        "<code>published.json</code> (a list of {name, acc, source}) to the run folder.</div>")
    if not fmt.is_num(acc):
        return _section("published", "Compared with published results", "",
                        '<div class="empty">A comparison needs the test accuracy, and eval.json is missing.</div>')
    shown = _select_published(rows, acc)
    chart = _img(plots.published_bars(shown, acc, ours=f"{data.name} (this run)"), "published comparison", "")
    entries = sorted([(r, False) for r in rows] + [({"name": f"{data.name} (this run)", "acc": acc}, True)],
                     key=lambda e: -float(e[0]["acc"]))
    trs = "".join(
        f'<tr class="{"ours" if ours else ""}"><td>{esc(str(r.get("name")))}</td>'
        f"<td>{esc(str(r.get('preprocessing', '')))}</td><td>{esc(str(r.get('submitter', '')))}</td>"
        f"<td class=num>{float(r['acc']):.3f}</td></tr>" for r, ours in entries)
    table = (f"<details><summary>All {len(rows)} published rows</summary><table><tr><th>model</th>"
             f"<th>preprocessing</th><th>submitter</th><th class=num>test acc</th></tr>{trs}</table></details>")
    source = data.published_source or (rows[0].get("source") or "published.json")
    sub = (f"Test accuracy as reported by the submitters (source: {esc(str(source))}); not re-measured here. "
           + (f"Showing {len(shown)} of {len(rows)} rows." if len(shown) < len(rows) else ""))
    return _section("published", "Compared with published results", sub, f'<div class="center">{chart}</div>{table}')


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
        ("eval throughput", esc(fmt.rate(timing.get("eval_img_per_s")))),
    ] + [(k, esc(str(v))) for k, v in timing.items()
         if k not in ("train_s", "eval_s", "train_img_per_s", "eval_img_per_s")])
    run_t = _kv([
        ("name", esc(data.name)),
        ("status", esc(data.status)),
        ("created", esc(fmt.when(run.get("created")))),
        ("seed", esc(str(run.get("seed", fmt.DASH)))),
        ("git revision", f"<code>{esc(str(git.get('rev', fmt.DASH)))}</code>"
                         + (' <b class="no">dirty</b>' if git.get("dirty") else "")),
        ("parameters", esc(f"{fmt.num(get(run, 'params.total'))} total, "
                           f"{fmt.num(get(run, 'params.trainable'))} trainable")),
    ])
    cmd = run.get("command")
    cmd_html = f"<h3>Command</h3><pre>{esc(str(cmd))}</pre>" if cmd else ""
    if run.get("resumed_by"):
        cmd_html += f"<p class=\"sub\">last resumed with <code>{esc(str(run['resumed_by']))}</code></p>"
    body = (f'<div class="grid2"><div><h3>Run</h3>{run_t}<h3>Timing</h3>{timing_t}</div>'
            f"<div><h3>Environment</h3>{env_t}</div></div>{cmd_html}")
    return _section("details", "Run details", "What this result is tied to: code revision, seed, "
                    "environment and the exact command.", body)


def _config(data: RunData) -> str:
    if not data.config_text:
        return _section("config", "Config", "", '<div class="empty">config.yaml is missing.</div>')
    lines = data.config_text.count("\n") + 1
    return _section("config", "Config", "The resolved config this run was made with.",
                    f"<details><summary>config.yaml ({lines} lines)</summary><pre>{esc(data.config_text)}</pre></details>")


def _files(data: RunData) -> str:
    items = []
    for fname, what in FILES.items():
        if fname == "published.json" and not data.present.get(fname) and data.published:
            mark = '<span class="ok">\u2713</span>'
            what = f"absent; compared with the {data.published_source} instead"
        elif data.present.get(fname):
            mark = '<span class="ok">\u2713</span>'
        elif fname in OPTIONAL:
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
    head = "<tr><th></th><th>model</th><th>test acc</th><th>parameters</th><th>eval img/s</th></tr>"
    row = lambda who, model, ev, run: (  # noqa: E731
        f"<tr><td>{esc(who)}</td><td>{esc(str(model))}</td><td>{fmt.pct(ev.get('acc'))}</td>"
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


SECTIONS = [
    ("training", "Training", _training),
    ("evaluation", "Test evaluation", _evaluation),
    ("distillation", "Distillation", _distillation),
    ("robustness", "Robustness", _robustness),
    ("pruning", "Pruning", _pruning),
    ("mistakes", "Mistakes", _mistakes),
    ("published", "Published", _published),
    ("details", "Run details", _details),
    ("config", "Config", _config),
    ("files", "Files", _files),
]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("visionsmith")
    except Exception:  # noqa: BLE001 - not installed as a distribution: fine
        return "dev"


def render_report(data: RunData) -> str:
    """The full HTML page for ``data`` as a string."""
    built = [(sid, title, _safe(fn, data, sid, title)) for sid, title, fn in SECTIONS]
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
