"""The task protocol and its registry: what everything outside ``tasks/`` asks a task.

A task is the kind of output a model gives (a class per image, a class per pixel, ...).  One task
is one file in this folder that subclasses ``Task`` and registers itself with ``@register_task``;
``cfg.task`` (the recipe's ``task:``) picks it, and that string appears nowhere else.  The engine,
api, cli and report only call the methods below and never name accuracy, masks or boxes.

    task = get_task(cfg)                               # an instance bound to the run's config
    data = task.build_datasets(seed)                   # {"train", "val", "test"}: task-shaped datasets
    model = task.build_model(num_classes, pretrained)  # backbone + this task's head, before adaptation
    batch = task.make_batch(ds, idx, transform, gen)   # {"image": [B,C,S,S] float, task.target_key: ...}
    loss = task.loss(model(batch["image"]), batch)     # what supervised / distill / ... call
    m = task.evaluate(model, ds, transform, ...)       # the metric accumulator over a whole split
    m[task.headline]                                   # drives best checkpoint, early stop, compare, CLI

A metric accumulator (``task.metric(classes)``) has ``update(outputs, batch)``, ``reduce()``
(sums its state across DDP ranks; a no-op without a process group) and ``compute() -> dict``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ClassVar, Protocol

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import ConfigError, add_check
from ..errors import UnknownNameError


class Metric(Protocol):
    def update(self, outputs: torch.Tensor, batch: dict) -> None: ...

    def reduce(self) -> None: ...

    def compute(self) -> dict: ...

class Task:
    """Base class: the shared parts of every task; a task file overrides what differs."""

    name: ClassVar[str]
    target_key: ClassVar[str]  # the batch key of the target ("label", "mask")
    headline: ClassVar[str]  # the metric that ranks runs ("acc", "miou")
    headline_label: ClassVar[str]  # how people name it ("test accuracy", "mIoU")
    direction: ClassVar[str] = "max"  # "max": higher is better
    val_keys: ClassVar[tuple[str, ...]] = ()  # the scalars logged at every validation
    data_sources: ClassVar[tuple[str, ...]] = ()  # the data.name values this task reads
    test_keys: ClassVar[tuple[str, ...]] = ()  # the scalars run.json keeps as the run's test result
    has_classes: ClassVar[bool] = True  # False: outputs are images, the class list is empty (enhancement)

    def __init__(self, cfg):
        self.cfg = cfg

    # -- data and model -----------------------------------------------------------------------
    def build_datasets(self, seed: int) -> dict:
        raise NotImplementedError

    def build_model(self, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
        raise NotImplementedError

    def make_batch(self, ds, idx: torch.Tensor, transform, generator: torch.Generator | None) -> dict:
        """The CPU batch for dataset rows ``idx``: ``{"image": float [B,C,S,S], target_key: ...}``.
        ``transform`` augments when it is a training transform, drawing only from ``generator``."""
        raise NotImplementedError

    def export_batch(self, ds, idx: torch.Tensor, transform, generator: torch.Generator) -> dict:
        """What an ONNX export is calibrated and checked on: rows ``idx`` as the model takes them (eval
        ``transform``, no augmentation), with their targets.  Most tasks: ``make_batch``."""
        return self.make_batch(ds, idx, transform, generator)

    # -- training -----------------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def distill_loss(self, outputs: torch.Tensor, teacher_outputs: torch.Tensor, batch: dict,
                     temperature: float) -> tuple[torch.Tensor, dict]:
        """(the distillation loss of a student's ``outputs`` against a frozen teacher's on the same batch,
        named parts to log as floats): what ``method=distill`` adds to ``loss`` for a dense task."""
        raise NotImplementedError(f"task {self.name} has no output distillation")

    # -- evaluation ---------------------------------------------------------------------------
    def metric(self, classes: list[str]) -> Metric:
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, targets, classes: list[str]) -> dict:
        """The metric dict of a whole split's ``outputs`` against its ``targets``, computed elsewhere
        (a kNN vote, an attacked model, a pruned model): one ``update`` and ``compute``."""
        metric = self.metric(list(classes))
        metric.update(outputs, {self.target_key: targets})
        return metric.compute()

    def better(self, value: float, best: float | None) -> bool:
        """Is ``value`` an improvement on ``best`` (None: nothing yet) in this task's direction?"""
        return best is None or (value > best if self.direction == "max" else value < best)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ds, transform, batch_size: int, device: torch.device,
                 channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                 progress: str | None = None, keep_outputs: bool = False, reduce: bool = False) -> dict:
        """Run ``model`` over the split in order, feed the metric, return ``compute()``'s dict.

        ``keep_outputs``: also return the float32 CPU outputs of every image under ``"outputs"``
        (what a task's report pictures are made from).  ``reduce``: combine the metric across DDP
        ranks, each of which evaluated its own shard (every rank must call it then; the loop's
        validation runs on rank 0 alone and does not)."""
        was_training = model.training
        model.eval()
        metric = self.metric(list(ds.classes))
        kept = []
        starts = range(0, len(ds), batch_size)
        bar = tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None)
        ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        for i in bar:
            batch = self.make_batch(ds, torch.arange(i, min(i + batch_size, len(ds))), transform, None)
            x = batch["image"].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx():
                out = model(x).float().cpu()
            metric.update(out, batch)
            if keep_outputs:
                kept.append(out)
        model.train(was_training)
        if reduce:
            metric.reduce()
        m = metric.compute()
        if keep_outputs:
            m["outputs"] = torch.cat(kept) if kept else torch.empty(0)
        return m

    def eval_artifacts(self, run_dir, ds, outputs: torch.Tensor, m: dict) -> dict:
        """After evaluating ``ds`` (``outputs``: every image's model output, in order): entries to add to
        the metrics dict, and -- when ``run_dir`` is given (the run's official test evaluation) -- the
        files the report draws from (e.g. the worst mistakes with their images)."""
        return {}

    def val_artifacts(self, run_dir, epoch: float, m: dict) -> None:
        """After each validation in the loop (rank 0): keep what the report draws over training from
        the full metrics dict ``m`` (generation: a few samples per epoch); nothing by default."""

    def postprocess_settings(self) -> dict:
        """The run's settings that turn raw model outputs into predictions outside the loop (predict,
        serve, an export's metadata), e.g. detection's score threshold and NMS IoU; none by default."""
        return {}

    def summary(self, m: dict) -> str:
        """The CLI's one line for a metrics dict, e.g. ``accuracy 0.9343  top-5 ...``."""
        return f"{self.headline} {m[self.headline]:.4f}"

    def per_class_lines(self, m: dict) -> list[str]:
        """The per-class table ``visionsmith eval`` prints under the summary."""
        return []

def per_image_table(rows: list[dict], header: str, cells) -> list[str]:
    """``per_class_lines`` for tasks scored per image: an ``image`` column as wide as the longest
    name, then ``header`` and ``cells(row)`` (a string) for each row."""
    if not rows:
        return []
    width = max(len(r["image"]) for r in rows)
    return [f"{'image':<{width}}  {header}"] + [f"{r['image']:<{width}}  {cells(r)}" for r in rows]


def batch_to(batch: dict, device) -> dict:
    """A batch on ``device``: tensors moved, lists of tensors (per-image boxes) moved item by item."""
    move = lambda v: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v  # noqa: E731
    return {k: [move(x) for x in v] if isinstance(v, list) else move(v) for k, v in batch.items()}


_TASKS: dict[str, type[Task]] = {}

def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: ``@register_task`` on a ``Task`` subclass with a ``name``."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    _TASKS[cls.name] = cls
    return cls

def _import_tasks() -> None:
    """Import every module of this package: each task file registers itself, so adding a task
    is adding a file (no list to edit)."""
    import importlib
    import pkgutil
    from pathlib import Path
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__package__}.{mod.name}")

def task_names() -> list[str]:
    _import_tasks()
    return sorted(_TASKS)

def task_class(name: str) -> type[Task]:
    _import_tasks()
    if name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]

def get_task(cfg) -> Task:
    """The task of ``cfg.task``, bound to ``cfg``."""
    return task_class(cfg.task)(cfg)


def check_config(cfg) -> None:
    """Config rules that depend on the task: the data source must be one the task reads."""
    sources = task_class(cfg.task).data_sources
    if sources and cfg.data.name not in sources:
        raise ConfigError(f"data.name={cfg.data.name} is not a {cfg.task} dataset; task {cfg.task} reads "
                          f"{', '.join(sources)} (set task: to the task this data is for)")


add_check(check_config)

TaskFactory = Callable[..., Task]
