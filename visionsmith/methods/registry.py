"""Training methods by name, registered by decorator; each declares what it needs.

``cfg.method`` is the only place a method name is a string.  Everything else asks the method's
``MethodSpec`` -- does it learn from labels, does it train the task's head (a self-supervised
method does not: its runs are scored by kNN on frozen features), does it need a teacher, which
tasks it supports -- instead of comparing names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..config import Config, ConfigError, add_check
from ..errors import UnknownNameError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[..., nn.Module]  # build(cfg, model, task, teacher=...) -> nn.Module
    labels: bool = True  # learns from the task's targets (False: self-supervised)
    trains_head: bool = True  # trains the task head (False: pretrains the backbone; scored by kNN)
    teacher: bool = False  # needs a frozen teacher (engine.build.build_teacher)
    tasks: tuple[str, ...] | None = ("classification",)  # the tasks it is written for; None: any task
    description: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, labels: bool = True, trains_head: bool = True, teacher: bool = False,
                    tasks: tuple[str, ...] | None = ("classification",)):
    """Decorator on a builder ``fn(cfg, model, task, teacher) -> nn.Module``."""

    def deco(fn):
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = MethodSpec(name, fn, labels, trains_head, teacher, None if tasks is None else tuple(tasks), doc[0] if doc else "")
        return fn

    return deco


def _import_methods() -> None:
    from . import (adversarial, distill, generative, rate_distortion, ssl_contrastive, ssl_masked,  # noqa: F401
                   supervised)  # (they register)


def method_spec(name: str) -> MethodSpec:
    _import_methods()
    if name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[MethodSpec]:
    _import_methods()
    return [_METHODS[k] for k in sorted(_METHODS)]


def check_config(cfg: Config) -> MethodSpec:
    """The rules that depend on what the method needs; a ``ConfigError`` naming the key otherwise."""
    spec = method_spec(cfg.method)
    if spec.tasks is not None and cfg.task not in spec.tasks:
        raise ConfigError(f"method={cfg.method} is written for task {' or '.join(spec.tasks)}, not {cfg.task}")
    if not cfg.data.labels and spec.labels:
        raise ConfigError(f"data.labels=false (unlabelled images) needs a self-supervised method (one that learns "
                          f"without labels: {', '.join(m.name for m in list_methods() if not m.labels)}); "
                          f"method {cfg.method!r} learns from labels")
    if not spec.trains_head and cfg.adapt.mode == "linear":
        raise ConfigError(f"method={cfg.method} pretrains the backbone, which adapt.mode=linear freezes; train the "
                          "probe afterwards: method=supervised adapt.mode=linear model.pretrained=<the pretraining "
                          "run folder>")
    if not spec.trains_head and cfg.prune.source:
        raise ConfigError(f"prune.source: pruning is judged by the task's metric; method {cfg.method!r} trains no head")
    if spec.teacher and not cfg.distill.teacher:
        raise ConfigError(f"distill.teacher is required when method is {cfg.method!r} (a run folder or a "
                          "registered model name)")
    return spec


add_check(check_config)


def build_method(cfg: Config, model: nn.Module, task=None, teacher: dict | None = None) -> nn.Module:
    """The training method wrapping ``model``.  ``task``: the run's task (default: ``cfg.task``'s);
    ``teacher`` comes from the engine, which knows run folders.  Batches hold [0, 1] pixels, which the
    model normalises itself (``model.pixel_norm``).  Methods that define ``evaluate`` replace the loop's
    per-epoch validation (self-supervised: kNN accuracy)."""
    from ..tasks import get_task
    spec = method_spec(cfg.method)
    task = task if task is not None else get_task(cfg)
    if spec.teacher and teacher is None:
        raise ConfigError(f"method {cfg.method!r} needs a teacher (distill.teacher)")
    return spec.build(cfg, model, task, teacher=teacher)


def trains_head(cfg: Config) -> bool:
    """Did this run train its task head?  False for self-supervised pretraining runs, which predict,
    export, serve, prune and attack refuse (there is nothing trained to judge)."""
    return method_spec(cfg.method).trains_head
