"""The classification task's part of the report: test evaluation (per-class precision/recall table
and confusion matrix), the most confident mistakes and the comparison with published results."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import fmt, plots
from .published import DEFAULT_PICKS, compare_line
from .sections import (
    Metric,
    TaskReport,
    confused_pairs,
    esc,
    img,
    kv,
    register_report,
    section,
)

if TYPE_CHECKING:
    from .run_folder import RunData


def _is_num_list(v) -> bool:
    return isinstance(v, list) and all(fmt.is_num(x) for x in v)


def _check_eval(ev: dict, bad) -> None:
    pc = ev.get("per_class")
    if pc is not None:
        lists = [pc.get(k) for k in ("precision", "recall", "f1", "support")] if isinstance(pc, dict) else [None]
        if not all(isinstance(v, list) and len(v) == len(lists[0]) and _is_num_list(v) for v in lists):
            bad("per_class")
    if "worst" in ev and not (isinstance(ev["worst"], list) and all(isinstance(w, dict) for w in ev["worst"])):
        bad("worst")


def _load(data: RunData) -> None:
    """published.json (a list of {name, acc, source}); for Fashion-MNIST the dataset README's table."""
    from .run_folder import _is_number, _read_json

    if data.present.get("published.json"):
        rows = _read_json(data.run_dir / "published.json", data, list) or []
        data.published = [r for r in rows if isinstance(r, dict) and _is_number(r.get("acc"))]
        data.published_source = "published.json"
    elif str(data.cfg("data.name", "")) == "fashion_mnist":
        # No table in the folder: fall back to the benchmark table shipped with the dataset.
        from .published import published_fashion_mnist

        data.published = published_fashion_mnist()
        data.published_source = "fashion-mnist README (Debian dataset-fashion-mnist)"
    if data.published and not data.present.get("published.json"):
        data.file_notes["published.json"] = f"absent; compared with the {data.published_source} instead"


def _kpis(data: RunData) -> list[tuple[str, str, str]]:
    ev = data.eval
    knn = "kNN " if data.knn else ""
    if ev or not data.val:
        return [
            (f"{knn}test acc", fmt.pct(ev.get("acc")), f"top-5 {fmt.pct(ev.get('top5'))}"),
            ("macro-F1", fmt.num(ev.get("macro_f1"), 3), "mean over classes"),
            ("test loss", fmt.num(ev.get("loss"), 3), "kNN vote cross-entropy" if knn else "cross-entropy"),
        ]
    # not evaluated yet: lead with the best validation epoch rather than three dashes
    best = max(data.val, key=lambda r: r.get("acc") if fmt.is_num(r.get("acc")) else -1)
    return [
        (f"val {knn}acc", fmt.pct(best.get("acc")), f"best epoch {fmt.num(best.get('epoch'))}, "
                                               f"top-5 {fmt.pct(best.get('top5'))}"),
        ("val macro-F1", fmt.num(best.get("macro_f1"), 3), "at the best epoch"),
        ("val loss", fmt.num(best.get("loss"), 3), "at the best epoch"),
    ]


def _card(data: RunData) -> list[str]:
    """The model card's metrics: the test numbers, the per-class table and the published comparison."""
    from .model_card import _table

    ev, classes = data.eval, data.classes
    knn = "kNN " if data.knn else ""
    out = [_table(["metric", "value"], [
        [f"{knn}accuracy (top-1)", fmt.pct(ev.get("acc"))],
        [f"{knn}top-5 accuracy", fmt.pct(ev.get("top5"))],
        [f"{knn}macro-F1", fmt.num(ev.get("macro_f1"), 4)],
        ["loss (kNN vote cross-entropy)" if knn else "loss (cross-entropy)", fmt.num(ev.get("loss"), 4)],
        ["test images", fmt.num(ev.get("n"))],
    ]), ""]
    pc = ev.get("per_class") or {}
    p, r, f1, sup = (pc.get(k) or [] for k in ("precision", "recall", "f1", "support"))
    k = min(len(p), len(r), len(f1), len(sup))
    if k:
        rows = [[classes[i] if i < len(classes) else str(i), fmt.fixed(p[i]), fmt.fixed(r[i]),
                 fmt.fixed(f1[i]), fmt.num(sup[i])] for i in range(k)]
        out += ["### Per class (test)", "", _table(["class", "precision", "recall", "F1", "support"], rows), ""]
    if data.published and fmt.is_num(ev.get("acc")) and not data.knn:
        # The README table is long: name a few well-known rows. A run's own published.json
        # was chosen for this run, so list all of it.
        picks = None if data.published_source == "published.json" else DEFAULT_PICKS
        out += ["### Compared with published results", "", "```",
                compare_line(ev["acc"], data.published, picks=picks, ours=data.name), "```", ""]
    return out


CLASSIFICATION = register_report(TaskReport(
    "classification",
    metrics={
        "acc": Metric("accuracy", "acc", knn=True),
        "top5": Metric("top-5 accuracy", "top-5", knn=True),
        "macro_f1": Metric("macro-F1", pct=False, knn=True),
        "loss": Metric("loss", pct=False),
        "robust_acc": Metric("robust accuracy (PGD)", "robust acc"),  # adversarial training's monitor
    },
    files={"eval_worst.npz": "images of the worst mistakes",
           "published.json": "published results to compare with (optional)"},
    optional=frozenset({"published.json"}),
    curve=("acc", "macro_f1", "robust_acc"),  # top-5 (near 1) would flatten these; it is in the table
    curve_legend="lower right",  # accuracies rise to the top
    noun="image classifier",
    output="class logits",
    kpis=_kpis,
    check_eval=_check_eval,
    load=_load,
    card=_card,
))


# ---------------------------------------------------------------------------------------------
# sections


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


@CLASSIFICATION.section("evaluation", "Test evaluation")
def _evaluation(data: RunData) -> str:
    ev = data.eval
    if not ev:
        why = "eval.json is missing" if not data.present.get("eval.json") else "eval.json could not be read"
        return section("evaluation", "Test evaluation", "",
                       f'<div class="empty">No test evaluation: {why}. The run has not been '
                       f"evaluated on the test split yet; the headline shows validation accuracy instead.</div>")
    classes = data.classes
    knn = data.knn
    table = kv([
        ("split", esc(str(ev.get("split", "test")))),
        ("images", esc(fmt.num(ev.get("n")))),
        ("kNN accuracy (top-1)" if knn else "accuracy (top-1)", fmt.pct(ev.get("acc"))),
        ("top-5 accuracy", fmt.pct(ev.get("top5"))),
        ("macro-F1", esc(fmt.num(ev.get("macro_f1"), 4))),
        ("loss (kNN vote cross-entropy)" if knn else "loss (cross-entropy)", esc(fmt.num(ev.get("loss"), 4))),
        ("evaluation speed", esc(fmt.rate(ev.get("eval_img_per_s")))),
    ] + ([("kNN", esc(f"k={ev.get('knn_k')}, cosine, bank of {fmt.num(ev.get('knn_bank'))} train images"))]
         if knn else []))
    cm = img(plots.confusion(ev.get("confusion") or [], classes), "confusion matrix",
             "No confusion matrix in eval.json.")
    bars = img(plots.per_class_bars(ev.get("per_class") or {}, classes), "precision and recall per class",
               "No per-class scores in eval.json.")
    pairs = confused_pairs(ev.get("confusion"), classes, "images")
    body = (f'<div class="grid2"><div><h3>Headline</h3>{table}{pairs}</div><div>{cm}</div>'
            f"<div>{_per_class_table(ev, classes)}</div><div><h3>&nbsp;</h3>{bars}</div></div>")
    if knn:
        return section("evaluation", "Test evaluation", "A self-supervised backbone has no trained classifier: "
                       "each test image is classified by a weighted vote of its k most similar training images "
                       "in the frozen feature space (rows of the confusion matrix are the true class). For a "
                       "linear probe, train <code>method=supervised adapt.mode=linear "
                       "model.pretrained=&lt;this run folder&gt;</code>.", body)
    return section("evaluation", "Test evaluation", "Metrics on the held-out test split, computed once "
                   "after training (rows of the confusion matrix are the true class).", body)


@CLASSIFICATION.section("mistakes", "Mistakes", late=True)
def _mistakes(data: RunData) -> str:
    z, classes = data.worst_images, data.classes
    worst = data.eval.get("worst") if isinstance(data.eval.get("worst"), list) else []
    if all(k in z for k in ("images", "labels", "preds", "confidence")) and len(z["images"]):
        body = img(plots.mistakes_grid(z["images"], z["labels"], z["preds"], z["confidence"], classes),
                   "worst mistakes", "")
        return section("mistakes", "Most confident mistakes",
                       "Test images the model got wrong with the highest confidence in the wrong class: "
                       "<b>true \u2192 predicted</b>, with the confidence in the predicted class below each image.",
                       f'<div class="center">{body}</div>')
    if worst:  # no images, but the list is there: show it as a table
        name = lambda i: classes[i] if isinstance(i, int) and 0 <= i < len(classes) else str(i)  # noqa: E731
        rows = "".join(f"<tr><td class=num>{esc(fmt.num(w.get('index')))}</td><td>{esc(name(w.get('label')))}</td>"
                       f"<td>{esc(name(w.get('pred')))}</td><td class=num>{fmt.num(w.get('confidence'), 3)}</td></tr>"
                       for w in worst if isinstance(w, dict))
        note = "eval_worst.npz is missing, so the images cannot be shown" if not data.present.get("eval_worst.npz") \
            else "eval_worst.npz has no usable images"
        return section("mistakes", "Most confident mistakes", esc(note) + ".",
                       "<table><tr><th class=num>test index</th><th>true</th><th>predicted</th>"
                       f"<th class=num>confidence</th></tr>{rows}</table>")
    why = "eval.json is missing" if not data.eval else "no mistakes recorded (eval.json has no 'worst' list and " \
                                                        "eval_worst.npz is missing)"
    return section("mistakes", "Most confident mistakes", "", f'<div class="empty">Nothing to show: {esc(why)}.</div>')


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


@CLASSIFICATION.section("published", "Published", late=True)
def _published(data: RunData) -> str:
    if data.knn:
        return section("published", "Compared with published results", "",
                       '<div class="empty">Not compared: published results are trained classifiers, and this '
                       "self-supervised run's accuracy is a kNN vote on frozen features. Compare its linear probe "
                       "(<code>adapt.mode=linear model.pretrained=&lt;this run folder&gt;</code>) instead.</div>")
    acc = data.eval.get("acc")
    rows = [r for r in data.published if fmt.is_num(r.get("acc"))]
    if not rows:
        return section("published", "Compared with published results", "",
                       '<div class="empty">No published results to compare with: add a '
                       "<code>published.json</code> (a list of {name, acc, source}) to the run folder.</div>")
    if not fmt.is_num(acc):
        return section("published", "Compared with published results", "",
                       '<div class="empty">A comparison needs the test accuracy, and eval.json is missing.</div>')
    shown = _select_published(rows, acc)
    chart = img(plots.published_bars(shown, acc, ours=f"{data.name} (this run)"), "published comparison", "")
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
    return section("published", "Compared with published results", sub, f'<div class="center">{chart}</div>{table}')
