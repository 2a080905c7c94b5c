"""Optional bridge to timm (Wightman, pytorch-image-models): any ``timm`` architecture by name.

timm is an optional extra (``pip install 'visionsmith[timm]'``): it needs torchvision, and the
torchvision on PyPI is a CUDA build that does not import next to a CPU torch.  So timm is imported
inside the factory only, and its absence is a clear ``ImportError`` at the point of use.

timm models already follow the backbone contract this package copies (``num_features``,
``forward_features``, ``forward_head(pre_logits=)``, ``reset_classifier``, ``pretrained_cfg``), so the
model is returned as timm builds it, plus the input normalisation every visionsmith model has:
``model.pixel_norm`` (``PixelNorm`` from timm's ``pretrained_cfg`` mean/std, non-persistent buffers: timm's
state dict is unchanged), applied first by ``forward_features`` (so also by timm's ``forward``, which
calls it) and ``forward_intermediates``; the model takes [0, 1] pixels.  Differences to know: the
classifier keeps timm's name (``fc``, ``head``, ``classifier``, ``head.fc``... see
``model.get_classifier()``), not always ``head.fc``.

Multi-scale features are timm's own: ``model.feature_info`` is timm's list of
``{"num_chs", "reduction", "module"}`` (one per stage for CNNs, one per block for ViTs), and
``model.forward_intermediates(x, indices=None)`` calls timm's with ``intermediates_only=True`` and
``stop_early=True``, so it returns the list of maps as every visionsmith backbone does (timm's
default is a ``(final, intermediates)`` tuple).  Unlike the visionsmith ViTs, timm does not apply
the final norm to ViT intermediates (its ``norm=False``).
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
import torch.nn as nn

from ._base import set_pixel_norm
from .registry import register_model
from .weights import WeightLoadError

INSTALL_HINT = "pip install 'visionsmith[timm]' (needs a torchvision build matching your torch)"


class TimmMissingError(ImportError):
    """timm (or the torchvision it needs) cannot be imported."""


def import_timm():
    try:
        import timm  # optional extra, imported lazily
    except Exception as e:  # noqa: BLE001 - a broken torchvision raises RuntimeError/OSError, not ImportError
        raise TimmMissingError(f"timm models need the optional timm extra: {INSTALL_HINT}. "
                               f"Import failed with {type(e).__name__}: {e}") from e
    return timm


@register_model(needs=("timm",))
def timm_model(model_name: str = "resnet18", num_classes: int = 1000, pretrained: bool | str = False,
               in_chans: int = 3, drop_rate: float = 0.0, **timm_kwargs) -> nn.Module:
    """Any timm architecture by ``model_name`` (optional extra); ``pretrained='<path>'``: local timm weights.

    timm itself drops a classifier of another class count and adapts the stem to ``in_chans``.
    Hub downloads are off: ``pretrained=True`` is an error."""
    if pretrained is True:
        raise WeightLoadError("timm_model: pass pretrained='<local weight file>'; visionsmith never downloads "
                              "from a model hub")
    timm = import_timm()
    kw = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **timm_kwargs)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise WeightLoadError(f"pretrained weight file {path} does not exist")
        kw.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    model = timm.create_model(model_name, **kw)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.setdefault("mean", (0.485, 0.456, 0.406))
    cfg.setdefault("std", (0.229, 0.224, 0.225))
    cfg.setdefault("input_size", (in_chans, 224, 224))
    model.pretrained_cfg = cfg
    set_pixel_norm(model, in_chans)
    # Instance attributes over timm's methods; partials (not closures) so that deepcopy and pickle
    # rebind them to the copy.  No parameter or persistent buffer is added.
    if callable(getattr(type(model), "forward_features", None)):
        model.forward_features = functools.partial(_timm_features, model)
    if callable(getattr(type(model), "forward_intermediates", None)):
        model.forward_intermediates = functools.partial(_timm_intermediates, model)
    return model


def _timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``forward_features`` on [0, 1] pixels ``x`` (normalised by ``model.pixel_norm`` first)."""
    return type(model).forward_features(model, model.pixel_norm(x))


def _timm_intermediates(model: nn.Module, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
    """timm's ``forward_intermediates`` as the visionsmith interface: ``x`` [0, 1] pixels [B, C, H, W] -> the maps
    [B, C_i, H/s_i, W/s_i] of the levels in ``indices`` (None: all, int n: the deepest n, list:
    those), shallow to deep, running no further than the deepest."""
    fn = type(model).forward_intermediates
    params = inspect.signature(fn).parameters
    kw = {k: True for k in ("intermediates_only", "stop_early") if k in params}
    out = fn(model, model.pixel_norm(x), indices=indices, **kw)
    if isinstance(out, tuple):  # a timm without intermediates_only: (final, intermediates)
        out = out[1]
    return list(out)
