"""Model registry: plain factory functions registered by decorator, keyed by name.

Strings only live at the config/CLI edge; code passes the factory's keyword arguments.
Every registered factory returns a module with the backbone interface (see ``_base.py``):
``num_features``, ``forward_features``, ``forward_head``, ``reset_classifier``, and ``pixel_norm`` (the
model takes [0, 1] pixels and normalises them itself with its ``pretrained_cfg`` mean/std).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..errors import UnknownNameError
from ._base import PixelNorm
from .weights import is_run_folder, load_run_backbone


@dataclass
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    family: str
    pretrained: tuple[str, ...] = ()  # names of declared weight assets this model can load
    description: str = ""
    needs: tuple[str, ...] = ()  # optional python packages (e.g. "timm")
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str | None = None, *, family: str = "", pretrained: tuple[str, ...] = (),
                   description: str = "", needs: tuple[str, ...] = ()):
    """Decorator: ``@register_model()`` on ``def mobilenetv2(num_classes=1000, ...)``."""

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} registered twice")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0:1]
        _REGISTRY[key] = ModelEntry(key, fn, family or fn.__module__.rsplit(".", 1)[-1],
                                    tuple(pretrained), doc if isinstance(doc, str) else "".join(doc),
                                    tuple(needs))
        return fn

    return deco


def list_models() -> list[ModelEntry]:
    _import_families()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_model_entry(name: str) -> ModelEntry:
    _import_families()
    if name not in _REGISTRY:
        import difflib
        near = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownNameError(f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(_REGISTRY))} "
                                "(`visionsmith models` lists them).")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model('mobilenetv2', num_classes=10, pretrained=True)``.

    ``pretrained`` may also be a visionsmith run folder of the same model (e.g. a self-supervised
    pretraining run): the model is built from scratch, then every weight but the classifier's is
    loaded from the run strictly (``weights.load_run_backbone``); the classifier stays new.
    """
    entry = get_model_entry(name)
    pretrained = kwargs.get("pretrained")
    if isinstance(pretrained, (str, os.PathLike)) and is_run_folder(pretrained):
        model = entry.fn(**{**kwargs, "pretrained": False})
        load_run_backbone(model, pretrained, name)
    else:
        model = entry.fn(**kwargs)
    if not isinstance(getattr(model, "pixel_norm", None), PixelNorm):
        raise TypeError(f"model {name!r}: its factory returned a {type(model).__name__} without a pixel_norm; "
                        "every model takes [0, 1] pixels and normalises them itself (models._base.set_pixel_norm)")
    return model


def _import_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from . import families  # noqa: F401
