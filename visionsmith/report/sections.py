"""Which sections a run's report shows: the task-report registry, and the HTML blocks sections use.

A page is the common sections (training curves, run details, config, files; distillation,
robustness and pruning where the run has them) around the sections of the run's task.  A task's
report is one file in this folder that describes the task's numbers and registers its sections:

    from .sections import Metric, TaskReport, register_report

    SEG = register_report(TaskReport(
        "segmentation",                                   # the task's name (tasks/<name>.py)
        metrics={"miou": Metric("mIoU"), ...},            # how the page names and formats each number
        files={"eval_samples.npz": "test images with true and predicted masks"},
        curve=("miou", "mean_acc", "pixel_acc")))         # what the validation plot draws

    @SEG.section("evaluation", "Test evaluation")         # drawn right after the training curves
    def _evaluation(data: RunData) -> str: ...

    @SEG.section("predictions", "Predictions", late=True)  # after the distillation/robustness/pruning ones
    def _predictions(data: RunData) -> str: ...

``report_for(name)`` finds it: every module of this package is imported once, so adding a task's
report is adding its file, nothing else.  A task with no report file gets ``GENERIC`` (its test
metrics as a table).  What the report asks the task itself (headline metric, direction, validation
and test keys) comes from ``tasks/`` (``task_class``) and is bound to the returned copy as ``spec``.
"""
from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import fmt, plots

if TYPE_CHECKING:
    from .run_folder import RunData

esc = html.escape

SectionFn = Callable[["RunData"], str]


# ---------------------------------------------------------------------------------------------
# what a task's report declares


@dataclass(frozen=True)
class Metric:
    """How the page names and formats one of a task's numbers."""

    label: str  # in sentences and plot legends: "accuracy", "mIoU"
    short: str = ""  # table columns and card titles: "acc", "top-5" (default: ``label``)
    pct: bool = True  # a rate in [0, 1] shown as a percentage; else ``digits`` significant digits
    digits: int = 3
    knn: bool = False  # it becomes a kNN-vote score when the run is scored by kNN (self-supervised)
    note: str = ""  # the line under its key-number card

    def __post_init__(self):
        if not self.short:
            object.__setattr__(self, "short", self.label)

    def show(self, v: Any, digits: int = 2) -> str:
        """``v`` as the page prints it (an em dash when it is not a number)."""
        return fmt.pct(v, digits) if self.pct else fmt.num(v, self.digits)


@dataclass(frozen=True)
class TaskSpec:
    """What the report asks the task (``tasks/<name>.py``): the numbers that matter and their order."""

    name: str
    headline: str | None  # the metric a run is ranked by ("acc", "miou")
    headline_label: str  # how people name it on the test split ("test accuracy", "mIoU")
    direction: str = "max"
    val_keys: tuple[str, ...] = ()  # logged at every validation (metrics.jsonl, split "val")
    test_keys: tuple[str, ...] = ()  # what run.json keeps as the run's test result


@dataclass(frozen=True)
class Section:
    sid: str  # the HTML id and the table-of-contents anchor
    title: str
    fn: SectionFn  # RunData -> the section's HTML ("" to leave it out of the page)
    late: bool = False  # after the method sections (distillation, robustness, pruning)


@dataclass
class TaskReport:
    """One task's part of the report.  Every hook is optional."""

    task: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # task files of a run folder -> what they add
    optional: frozenset[str] = frozenset()  # of ``files``: absent is normal, not "incomplete"
    curve: tuple[str, ...] | None = None  # val keys the validation plot draws (None: ``val_keys``)
    curve_legend: str = "best"  # where its legend goes (a matplotlib ``loc``)
    noun: str = "model"  # the model card: "A `resnet18` <noun> for 10 classes"
    output: str = "outputs"  # the model card's output row: "class logits"
    kpis: Callable[[RunData], list[tuple[str, str, str]]] | None = None  # score cards (title, value, note)
    check_eval: Callable[[dict, Callable[[str], None]], None] | None = None  # drop odd eval.json fields: bad(key)
    load: Callable[[RunData], None] | None = None  # read more than the .npz files of ``files``
    card: Callable[[RunData], list[str]] | None = None  # model-card markdown lines under "## Metrics"
    sections: list[Section] = field(default_factory=list)
    spec: TaskSpec | None = None  # bound by ``report_for``

    def section(self, sid: str, title: str, late: bool = False) -> Callable[[SectionFn], SectionFn]:
        """Decorator: register ``fn(data) -> html`` as a section of this task's report, in order."""
        def add(fn: SectionFn) -> SectionFn:
            self.sections.append(Section(sid, title, fn, late))
            return fn
        return add

    # -- what the common sections ask ---------------------------------------------------------
    def metric(self, key: str) -> Metric:
        return self.metrics.get(key) or Metric(key.replace("_", " "), pct=False, digits=4)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.task

    @property
    def headline(self) -> str | None:
        return self.spec.headline if self.spec else None

    @property
    def headline_label(self) -> str:
        return self.spec.headline_label if self.spec else "result"

    @property
    def direction(self) -> str:
        return self.spec.direction if self.spec else "max"

    @property
    def val_keys(self) -> tuple[str, ...]:
        return self.spec.val_keys if self.spec else ()

    @property
    def test_keys(self) -> tuple[str, ...]:
        return self.spec.test_keys if self.spec else ()

    @property
    def curve_keys(self) -> tuple[str, ...]:
        return self.curve if self.curve is not None else self.val_keys

    def early(self) -> list[Section]:
        return [s for s in self.sections if not s.late]

    def late(self) -> list[Section]:
        return [s for s in self.sections if s.late]


_REPORTS: dict[str, TaskReport] = {}


def register_report(report: TaskReport) -> TaskReport:
    """Register ``report`` as the report of task ``report.task``; returns it (for ``@REPORT.section``)."""
    if report.task in _REPORTS:
        raise ValueError(f"report of task {report.task!r} registered twice")
    _REPORTS[report.task] = report
    return report


def _import_reports() -> None:
    """Import every module of this package once: each task's report file registers itself."""
    import importlib
    import pkgutil
    from pathlib import Path
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")


def _spec(name: str) -> TaskSpec:
    """The task's own answers (``tasks.task_class``); raises for a task this install does not know."""
    from ..tasks import task_class
    cls = task_class(name)
    return TaskSpec(name=cls.name, headline=cls.headline, headline_label=cls.headline_label,
                    direction=cls.direction, val_keys=tuple(cls.val_keys), test_keys=tuple(cls.test_keys))


def report_for(name: str, spec: TaskSpec | None = None) -> TaskReport:
    """The report of task ``name`` bound to the task's spec (a copy: safe to keep per run).

    ``spec``: use this instead of asking ``tasks/`` (a run of a task this install does not know).
    Raises what ``task_class`` raises for an unknown task when ``spec`` is not given."""
    spec = spec or _spec(name)
    if name not in _REPORTS:
        _import_reports()
    base = _REPORTS.get(name) or dataclasses.replace(GENERIC, task=name, sections=list(GENERIC.sections))
    return dataclasses.replace(base, spec=spec)


# ---------------------------------------------------------------------------------------------
# HTML blocks every section uses


def img(b64: str | None, alt: str, empty: str) -> str:
    """An inline PNG (``plots`` output), or a grey box saying ``empty`` when there is none."""
    if b64 is None:
        return f'<div class="empty">{esc(empty)}</div>'
    return (f'<figure><img alt="{esc(alt)}" width="{plots.css_width(b64)}" '
            f'src="data:image/png;base64,{b64}"></figure>')


def kv(rows: list[tuple[str, str]]) -> str:
    """Two-column key/value table; values are already escaped HTML."""
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def section(sid: str, title: str, sub: str, body: str) -> str:
    """A card with a title, an optional subtitle (HTML) and a body (HTML)."""
    sub_html = f'<p class="sub">{sub}</p>' if sub else ""
    return f'<section class="card" id="{sid}"><h2>{esc(title)}</h2>{sub_html}{body}</section>'


def empty(text_html: str) -> str:
    return f'<div class="empty">{text_html}</div>'


def crops_card(data: RunData, file: str, sid: str, title: str, draw: Callable[[dict], str | None],
               caption: str) -> str:
    """The card of a task's side-by-side crops: ``draw(arrays of file) -> PNG``, or a note that the test
    evaluation writes ``file`` when it is missing."""
    z = data.arrays.get(file, {})
    pic = draw(z) if z else None
    if pic is None:
        return section(sid, title, "", empty(f"<code>{file}</code> is missing: the test evaluation writes the crops "
                                             "there (run <code>visionsmith eval RUN</code>)."))
    return section(sid, title, caption, f'<div class="center">{img(pic, "crops", "")}</div>')


def no_eval(data: RunData, sid: str = "evaluation", title: str = "Test evaluation") -> str | None:
    """The "not evaluated yet" card when eval.json is absent or unreadable, else None."""
    if data.eval:
        return None
    why = "eval.json is missing" if not data.present.get("eval.json") else "eval.json could not be read"
    t = data.task
    instead = f"; the headline shows the best validation {t.metric(t.headline).label} instead" if t.headline else ""
    return section(sid, title, "", empty(f"No test evaluation: {why}. The run has not been evaluated on the "
                                         f"test split yet{esc(instead)}."))


def confused_pairs(cm: Any, classes: list[str], unit: str = "images", top: int = 5) -> str:
    """The largest off-diagonal cells of a confusion matrix (rows = true class): where the model
    goes wrong most, with each cell's share of its true class."""
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
    return (f"<h3>Most confused pairs</h3><table><tr><th>true \u2192 predicted</th><th class=num>{esc(unit)}</th>"
            f"<th class=num>of the true class</th></tr>{rows}</table>")


# ---------------------------------------------------------------------------------------------
# the report of a task with no report file: its test metrics as a table


GENERIC = TaskReport("generic")


@GENERIC.section("evaluation", "Test evaluation")
def _generic_evaluation(data: RunData) -> str:
    missing = no_eval(data)
    if missing is not None:
        return missing
    t, ev = data.task, data.eval
    keys = [k for k in t.test_keys if k in ev] or [k for k, v in ev.items() if fmt.is_num(v) and k != "n"]
    rows = [("split", esc(str(ev.get("split", "test")))), ("images", esc(fmt.num(ev.get("n"))))]
    rows += [(t.metric(k).label, esc(t.metric(k).show(ev.get(k), 2))) for k in keys]
    return section("evaluation", "Test evaluation",
                   f"Task <b>{esc(t.name)}</b> has no report sections yet (a file under "
                   "<code>visionsmith/report/</code>); its test metrics:", kv(rows))
