"""The backbone interface every task and method relies on (timm's contract).

A model is an ``nn.Module`` with:
  - ``num_features``: channels of the feature map that the head consumes;
  - ``forward(x)``, ``forward_features(x [B,C,H,W]) -> feats``: ``x`` is [0, 1] pixels (float32,
    what ``data.BatchTransform`` returns); ``feats`` is ``[B, num_features, h, w]`` for CNNs or
    ``[B, num_features]`` when the backbone pools itself (transformers);
  - ``forward_head(feats, pre_logits=False) -> [B, num_classes]`` (or ``[B, num_features]``);
  - ``reset_classifier(num_classes)``: a fresh head for a new class count;
  - ``pretrained_cfg``: ``{"mean", "std", "input_size", "weights"}``; ``mean``/``std`` are what the
    weights expect the pixels to be normalised with;
  - ``pixel_norm``: a ``PixelNorm`` built from ``pretrained_cfg`` (below), the one place the model's
    input is normalised: ``forward_features`` and ``forward_intermediates`` start with
    ``x = self.pixel_norm(x)``.  Its mean/std are non-persistent buffers, so state dicts, LoRA
    target names, pruning and checkpoints are those of the network alone.  Whatever runs the model
    (the loop, kNN and few-shot features, attacks, ONNX export, serving) hands it pixels.

Multi-scale features (for dense heads: FPN, DeepLabV3+, detection necks), after timm's
``feature_info`` / ``forward_intermediates``:
  - ``feature_info``: a list of dicts, shallow to deep, one per pyramid level,
    ``{"num_chs": C_i, "reduction": s_i, "module": "<module path>"}``.  For a CNN a level is the
    last layer at each stride (typically 2, 4, 8, 16, 32), the deepest being the output of
    ``forward_features``; for a ViT it is the patch tokens of a few evenly spaced blocks (through
    the final LayerNorm), all at ``reduction`` = patch size.  ``module`` names the submodule
    whose output the level is (read after the activation that follows it, where that activation
    is a shared module), so it is also a valid ``model.get_submodule`` path (a hook target).  It
    is plain data (safe to deepcopy, pickle, log), set at construction from the architecture,
    and stays right after peft adapters are injected (in place: module paths do not change).
  - ``forward_intermediates(x [B, C, H, W], indices=None) -> list[Tensor]``: the level maps
    ``[B, C_i, H/s_i, W/s_i]`` (sides divisible by ``s_i``; otherwise as the layers round) for the
    levels in ``indices``, shallow to deep.  ``x`` is what ``forward_features`` takes ([0, 1]
    pixels, normalised by ``pixel_norm`` first).  ``indices``: None = every level; a sequence of
    level numbers (negative ones count from the deepest, like Python); an int ``n`` = the deepest
    ``n`` levels (timm's convention).
    The network runs only as far as the deepest requested level.  Adds no parameters, buffers or
    submodules: state dicts, LoRA target names, random init and ``forward`` are unchanged.

Families implement it with ``FeatureMixin`` below: ``feature_info`` from ``feature_info_from_plan``
and a ``_feature_steps()`` method; timm models (``timm_models.py``) delegate to timm's own.
"""
from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NEUTRAL_MEAN = NEUTRAL_STD = (0.5, 0.5, 0.5)  # a pretrained_cfg without mean/std: [0, 1] -> [-1, 1]


def _per_channel(v, in_chans: int) -> torch.Tensor:
    """Channel statistics (usually RGB) -> float32 ``[1, in_chans, 1, 1]``: as given when there is one
    value per channel (or a single value, repeated); otherwise their mean for every channel (a gray
    model with RGB statistics uses the mean of the three, as the data transforms always did)."""
    t = torch.tensor(tuple(float(a) for a in v), dtype=torch.float32)
    if t.numel() != in_chans and t.numel() != 1:
        t = t.mean().reshape(1)
    return t.reshape(1, -1, 1, 1).expand(1, in_chans, 1, 1).contiguous()


class PixelNorm(nn.Module):
    """``forward(pixels [B, C, H, W] in [0, 1]) -> (pixels - mean) / std``: a model's input normalisation.

    ``mean``/``std``: ``[1, C, 1, 1]`` float32 buffers, non-persistent (no state_dict keys, no
    parameters), so they follow ``.to(device)`` and are constants in an exported ONNX graph.  Built
    by ``from_cfg`` from a model's ``pretrained_cfg``; every family holds one as ``self.pixel_norm``.
    """

    def __init__(self, mean, std, in_chans: int):
        super().__init__()
        self.in_chans = int(in_chans)
        self.register_buffer("mean", _per_channel(mean, self.in_chans), persistent=False)
        self.register_buffer("std", _per_channel(std, self.in_chans), persistent=False)

    @classmethod
    def from_cfg(cls, pretrained_cfg: dict | None, in_chans: int) -> "PixelNorm":
        """From ``pretrained_cfg``'s ``mean``/``std``; (0.5, 0.5, 0.5) for either that is missing."""
        pc = pretrained_cfg or {}
        return cls(pc.get("mean") or NEUTRAL_MEAN, pc.get("std") or NEUTRAL_STD, in_chans)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> pixels (``x * std + mean``, not clamped)."""
        return x * self.std + self.mean


def set_pixel_norm(model: nn.Module, in_chans: int) -> PixelNorm:
    """``model.pixel_norm = PixelNorm.from_cfg(model.pretrained_cfg, in_chans)`` on the device of the
    model's parameters; every family calls it once ``pretrained_cfg`` is known."""
    norm = PixelNorm.from_cfg(getattr(model, "pretrained_cfg", None), in_chans).to(_param_device(model))
    model.pixel_norm = norm
    return norm


class ClassifierHead(nn.Module):
    """Global average pool + dropout + linear.  feats [B,C,h,w] or [B,C] -> logits [B,K].

    ``fc`` is an ``nn.Identity`` when ``num_classes == 0`` (a features-only model).
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.dim() == 4:
            x = x.mean((2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class BackboneMixin:
    """``forward`` and ``reset_classifier`` for models whose head is ``self.head: ClassifierHead``."""

    num_features: int
    num_classes: int
    head: ClassifierHead

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        drop = self.head.drop.p
        self.head = ClassifierHead(self.num_features, num_classes, drop).to(_param_device(self))

    def get_classifier(self) -> nn.Module:
        return self.head.fc


def _param_device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Pretrained RGB stem ``[O,3,k,k]`` -> ``[O,in_chans,k,k]``: sum for 1 channel, tile otherwise
    (timm's ``adapt_input_conv``), so grayscale input keeps the pretrained response."""
    if in_chans == weight.shape[1]:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


# ---------------------------------------------------------------------------------------------
# Multi-scale features: feature_info + forward_intermediates (see the module docstring).

FeatureStep = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


def feature_info_from_plan(plan: Sequence[tuple[str, int, int]]) -> list[dict]:
    """The pyramid of a network run as a chain of steps: ``plan`` holds ``(module, out_chs, stride)``
    per step, shallow to deep (``stride``: that step's own down-sampling, 1 when it keeps the
    resolution).  A level is the last step at each cumulative reduction.

    >>> feature_info_from_plan([("stem", 32, 2), ("b0", 16, 1), ("b1", 24, 2)])
    [{'num_chs': 16, 'reduction': 2, 'module': 'b0'}, {'num_chs': 24, 'reduction': 4, 'module': 'b1'}]
    """
    info: list[dict] = []
    reduction = 1
    for module, chs, stride in plan:
        reduction *= int(stride)
        level = {"num_chs": int(chs), "reduction": reduction, "module": module}
        if info and info[-1]["reduction"] == reduction:
            info[-1] = level
        else:
            info.append(level)
    return info


def resolve_feature_indices(indices: int | Sequence[int] | None, num_levels: int) -> list[int]:
    """``indices`` as ``forward_intermediates`` takes it -> sorted, unique, non-negative level numbers.

    None -> all levels; an int ``n`` -> the deepest ``n`` levels; a sequence -> those levels
    (``-1`` is the deepest).  Out-of-range values are an ``IndexError`` naming the valid range."""
    if indices is None:
        return list(range(num_levels))
    ok = isinstance(indices, (numbers.Integral, Sequence)) or torch.is_tensor(indices)
    if isinstance(indices, bool) or not ok:
        raise TypeError(f"indices must be None, an int (the deepest n levels) or a list of level numbers, "
                        f"not {type(indices).__name__}")
    if isinstance(indices, numbers.Integral):
        indices = int(indices)
        if not 1 <= indices <= num_levels:
            raise IndexError(f"indices={indices} asks for the deepest {indices} levels; the model has "
                             f"{num_levels} (see model.feature_info)")
        return list(range(num_levels - indices, num_levels))
    out = set()
    for i in (indices.tolist() if torch.is_tensor(indices) else indices):
        i = int(i)
        if not -num_levels <= i < num_levels:
            raise IndexError(f"feature level {i} out of range: the model has {num_levels} levels "
                             f"(0..{num_levels - 1}, or -{num_levels}..-1; see model.feature_info)")
        out.add(i % num_levels)
    return sorted(out)


class FeatureMixin:
    """``forward_intermediates`` for a backbone that is a chain of steps.

    A family sets ``self.feature_info`` in ``__init__`` (usually ``feature_info_from_plan``) and
    defines ``_feature_steps() -> [(module path, fn), ...]``: the network up to its deepest level
    as a chain ``x -> fn_0(x) -> fn_1(...) ...`` whose composition is ``forward_features`` (for
    CNNs).  Every level's ``module`` must be the name of one step; the tensor after that step is
    the level, passed through ``_feature_readout`` (identity for CNNs; a ViT turns tokens into a
    map there).  Steps are rebuilt on each call from the live submodules, so nothing holding a
    reference to the model is stored (deepcopy and pickle stay plain), and adapters that peft
    injected are run too.
    """

    feature_info: list[dict]

    def _feature_steps(self) -> list[FeatureStep]:
        raise NotImplementedError(f"{type(self).__name__} does not define its feature steps")

    def _feature_readout(self, x: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """The level tensor as a map ``[B, C, h, w]``; ``input_size`` is the input's ``(H, W)``."""
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None
                              ) -> list[torch.Tensor]:
        """``x`` [B, in_chans, H, W] ([0, 1] pixels, as ``forward_features`` takes it) -> the maps
        ``[B, feature_info[i]["num_chs"], H / reduction_i, W / reduction_i]`` for the levels ``i`` in
        ``indices`` (None: all; int n: the deepest n; list: those, negatives from the end), shallow to
        deep.  Stops after the deepest requested level."""
        levels = [f["module"] for f in self.feature_info]
        take = resolve_feature_indices(indices, len(levels))
        if not take:
            return []
        x = self.pixel_norm(x)
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        out: list[torch.Tensor] = []
        level = 0
        for name, fn in self._feature_steps():
            x = fn(x)
            if name == levels[level]:
                if level in take:
                    out.append(self._feature_readout(x, input_size))
                if level == take[-1]:
                    return out
                level += 1
        raise RuntimeError(f"{type(self).__name__}: feature level {level} ({levels[level]!r}) is not one of its "
                           "feature steps; feature_info and _feature_steps disagree")


def classifier_prefix(model: nn.Module) -> str:
    """Module path of the classifier, e.g. ``head.fc`` (the new head every mode trains)."""
    get = getattr(model, "get_classifier", None)
    clf = get() if get is not None else None
    for name, mod in model.named_modules():
        if mod is clf:
            return name
    raise ValueError(f"{type(model).__name__} has no classifier to keep trainable; transfer modes need "
                     "a model with the backbone interface (get_classifier / reset_classifier)")
