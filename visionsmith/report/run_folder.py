"""Read a run folder for the report and the model card, tolerating any part being absent.

A run folder may be half written: the engine was killed mid-epoch, evaluation never ran, a
line of ``metrics.jsonl`` was cut off mid-write.  Nothing here raises on such input; every
file that is absent or unreadable is recorded in ``RunData.missing`` / ``RunData.problems``
so the report can say so instead of crashing or silently showing less.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# What each file adds to the report; shown next to a missing file so the reader knows what
# they are not seeing and why.  These are every run's; a task adds its own (``TaskReport.files``,
# e.g. eval_worst.npz, eval_samples.npz), and ``RunData.files`` is the union.
FILES = {
    "config.yaml": "resolved config",
    "run.json": "run status, environment, timing, parameters, git revision",
    "metrics.jsonl": "training and validation curves",
    "eval.json": "test metrics, confusion matrix, per-class scores",
}
OPTIONAL: set[str] = set()
DEFAULT_TASK = "classification"  # a run folder from before tasks existed


@dataclass
class RunData:
    """Everything the report reads from one run folder; absent parts are empty, never None."""

    run_dir: Path
    config: dict = field(default_factory=dict)
    config_text: str = ""
    run: dict = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)  # metrics.jsonl lines with split == "train"
    val: list[dict] = field(default_factory=list)  # metrics.jsonl lines with split == "val"
    eval: dict = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # "<file>.npz" -> its arrays
    published: list[dict] = field(default_factory=list)
    published_source: str = ""
    present: dict[str, bool] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # required files that are absent
    problems: list[str] = field(default_factory=list)  # files present but (partly) unreadable
    file_notes: dict[str, str] = field(default_factory=dict)  # an absent file's stand-in ("compared with ...")
    _task: Any = field(default=None, repr=False)  # the bound TaskReport (``task``)

    # -- convenience accessors ---------------------------------------------------------------
    def cfg(self, dotted: str, default: Any = None) -> Any:
        """``cfg("model.name")``: a value from the resolved config, ``default`` when absent."""
        return get(self.config, dotted, default)

    @property
    def name(self) -> str:
        return str(self.run.get("name") or self.config.get("name") or self.run_dir.name)

    @property
    def status(self) -> str:
        return str(self.run.get("status") or "unknown")

    @property
    def task(self):
        """The run's task report (``sections.TaskReport``, bound to the task's spec): headline,
        metrics, task files and sections.  Set by ``load_run``; classification when never set."""
        if self._task is None:
            from .sections import report_for
            self._task = report_for(DEFAULT_TASK)
        return self._task

    @property
    def files(self) -> dict[str, str]:
        """Every file the report reads for this run's task, and what it adds."""
        return {**FILES, **self.task.files}

    @property
    def optional(self) -> set[str]:
        return OPTIONAL | set(self.task.optional)

    @property
    def worst_images(self) -> dict[str, np.ndarray]:
        return self.arrays.get("eval_worst.npz", {})

    @property
    def knn(self) -> bool:
        """A self-supervised run: its accuracies are kNN accuracies of frozen features, not a classifier's."""
        return self.eval.get("monitor") == "knn" or any(r.get("monitor") == "knn" for r in self.val)

    @property
    def classes(self) -> list[str]:
        classes = self.eval.get("classes") or self.cfg("data.classes") or self.run.get("classes") or []
        return [str(c) for c in classes] if isinstance(classes, list) else []


def get(d: Any, dotted: str, default: Any = None) -> Any:
    """Walk ``d`` by a dotted key; any non-dict on the way gives ``default`` (files may be odd)."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _read_json(path: Path, data: RunData, expect: type) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        data.problems.append(f"{path.name}: could not be read ({type(e).__name__}: {e}); ignored")
        return None
    if not isinstance(value, expect):
        data.problems.append(f"{path.name}: expected a JSON {expect.__name__}, got "
                             f"{type(value).__name__}; ignored")
        return None
    return value


def _read_metrics(path: Path, data: RunData) -> None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        data.problems.append(f"metrics.jsonl: could not be read ({e})")
        return
    lines = text.splitlines()
    bad = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(i)
            continue
        if not isinstance(row, dict):
            bad.append(i)
        elif row.get("split") == "train":
            data.train.append(row)
        elif row.get("split") == "val":
            data.val.append(row)
    if bad:
        # The usual cause is a run killed while writing its last line: say which lines.
        if bad == [len(lines)]:
            msg = f"skipped unreadable line {bad[0]} (the last one: the run was probably stopped while writing it)"
        else:
            msg = f"skipped {len(bad)} unreadable line(s): " + ", ".join(map(str, bad[:10])) + \
                  (", ..." if len(bad) > 10 else "")
        data.problems.append(f"metrics.jsonl: {msg}")


def _read_npz(path: Path, data: RunData) -> None:
    try:
        # allow_pickle=False: a shared run folder is untrusted input.
        with np.load(path, allow_pickle=False) as z:
            data.arrays[path.name] = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip, pickle and value errors all mean "unreadable"
        data.problems.append(f"{path.name}: could not be read ({type(e).__name__}: {e})")


def _clean_eval(ev: dict, data: RunData) -> dict:
    """Drop eval.json fields whose shape is not the one the task's evaluation writes, noting each.

    Sections can then trust the types they read; a hand-edited or foreign eval.json loses the
    odd fields, not the whole page.  The task's own fields (per-class scores, ...) are checked by
    its ``TaskReport.check_eval``.
    """
    def bad(key: str) -> None:
        data.problems.append(f"eval.json: '{key}' does not have the expected form; ignored")
        ev.pop(key)

    t = data.task
    for key in dict.fromkeys([*t.test_keys, *t.metrics, "n", "eval_img_per_s"]):
        if key in ev and not _is_number(ev[key]):
            bad(key)
    if "classes" in ev and not (isinstance(ev["classes"], list) and all(isinstance(c, str) for c in ev["classes"])):
        bad("classes")
    cm = ev.get("confusion")
    if cm is not None and not (isinstance(cm, list) and cm and all(
            isinstance(r, list) and len(r) == len(cm) and all(_is_number(v) for v in r) for r in cm)):
        bad("confusion")
    if t.check_eval is not None:
        t.check_eval(ev, bad)
    return ev


def _task_name(data: RunData) -> str:
    """The run's task: config.yaml's ``task:``, else run.json's ``"task"`` (a config that could not be
    read), else classification (a folder from before tasks existed)."""
    for source in (data.config, data.run):
        name = source.get("task")
        if isinstance(name, str) and name:
            return name
    return DEFAULT_TASK


def _bind_task(data: RunData) -> None:
    """Find the run's task report; a task this install does not know is shown generically."""
    from .sections import TaskSpec, report_for

    name = _task_name(data)
    try:
        data._task = report_for(name)
    except Exception as e:  # noqa: BLE001 - an unknown task (a newer visionsmith) must not lose the page
        test = data.run.get("test") if isinstance(data.run.get("test"), dict) else {}
        keys = tuple(k for k, v in test.items() if _is_number(v))
        spec = TaskSpec(name=name, headline=keys[0] if keys else None, headline_label=keys[0] if keys else "result",
                        test_keys=keys)
        data.problems.append(f"task '{name}' is not known to this visionsmith ({type(e).__name__}: {e}); "
                             "its results are shown as a plain table")
        try:
            data._task = report_for(name, spec=spec)
        except Exception:  # noqa: BLE001 - a report file that does not import: still a page
            from .sections import GENERIC
            data._task = dataclasses.replace(GENERIC, task=name, sections=list(GENERIC.sections), spec=spec)


def load_run(run_dir: str | Path) -> RunData:
    """Read every known file of ``run_dir``; never raises for absent or broken files."""
    run_dir = Path(run_dir)
    data = RunData(run_dir=run_dir)
    for fname in FILES:
        data.present[fname] = (run_dir / fname).is_file()

    if data.present["config.yaml"]:
        try:
            data.config_text = (run_dir / "config.yaml").read_text(encoding="utf-8", errors="replace")
            cfg = yaml.safe_load(data.config_text)
            if isinstance(cfg, dict):
                data.config = cfg
            else:
                data.problems.append("config.yaml: not a mapping; shown as text only")
        except (OSError, yaml.YAMLError) as e:
            data.problems.append(f"config.yaml: could not be parsed ({type(e).__name__}); shown as text only")
    if data.present["run.json"]:
        data.run = _read_json(run_dir / "run.json", data, dict) or {}
    _bind_task(data)  # the task says which other files there are and what eval.json holds
    for fname in data.files:
        data.present[fname] = (run_dir / fname).is_file()
        if not data.present[fname] and fname not in data.optional:
            data.missing.append(fname)

    if data.present["metrics.jsonl"]:
        _read_metrics(run_dir / "metrics.jsonl", data)
    if data.present["eval.json"]:
        data.eval = _clean_eval(_read_json(run_dir / "eval.json", data, dict) or {}, data)
    for fname in data.task.files:
        if fname.endswith(".npz") and data.present[fname]:
            _read_npz(run_dir / fname, data)
    if data.task.load is not None:
        data.task.load(data)
    return data


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def headline(data: RunData) -> tuple[float | None, str]:
    """The one number a report leads with, and its label: the task's headline metric on the test
    split (test accuracy, mIoU), else its best validation value."""
    t = data.task
    key = t.headline
    if key is None:
        return None, "no headline metric"
    m = t.metric(key)
    knn = "kNN " if data.knn else ""  # self-supervised: k-nearest-neighbour accuracy of frozen features
    if _is_number(data.eval.get(key)):
        n = data.eval.get("n")
        return float(data.eval[key]), f"{knn}{t.headline_label}" + (f" \u00b7 {n:,} images" if _is_number(n) else "")
    vals = [(r[key], r.get("epoch")) for r in data.val if _is_number(r.get(key))]
    if vals:
        pick = min if t.direction == "min" else max
        value, epoch = pick(vals, key=lambda a: a[0])
        return float(value), f"best val {knn}{m.label} (epoch {epoch}) \u00b7 no test evaluation yet"
    return None, f"no {m.label} recorded yet"


def atomic_write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
