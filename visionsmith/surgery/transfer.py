"""Transfer-learning modes: which parameters of a pretrained model train, and at what learning rate.

``adapt_model(model, cfg.adapt)`` is applied right after the model is built, in training and when
a run folder is loaded again, so the module tree (and so the checkpoint keys) is the same both times.

Blocks.  Partial fine-tuning and layer-wise learning-rate decay need the model's depth order.  We
derive it from parameter names instead of asking every family for a list: a block is the module
path up to and including the first numbered child (``features.3``, ``layer2.1``,
``backbone.encoder.layer.5``), else the parameter's parent module (``backbone.embeddings``).
Blocks keep registration order, which is input-to-output order in every model we build.  The
classifier (``model.get_classifier()``) is never a block: it always trains, at the base rate.
"""
from __future__ import annotations

import torch.nn as nn

from ..config import AdaptConfig
from ..errors import UserError
from ..models._base import classifier_prefix
from .peft import inject_adapters

PEFT_MODES = ("lora", "loha", "lokr", "ia3", "prompt")


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def param_blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped into blocks, input to output, the classifier left out."""
    head = classifier_prefix(model)
    order: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if _in(name, head):
            continue
        parts = name.split(".")
        cut = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
        key = ".".join(parts[:cut + 1]) if cut is not None else ".".join(parts[:-1])
        order.setdefault(key, []).append(name)
    return list(order.values())


def _freeze_norm_stats(model: nn.Module) -> int:
    """Keep BatchNorm layers whose parameters are all frozen in eval mode for good, so their running
    statistics stay the pretrained ones and a frozen backbone really is a fixed function.

    Done by swapping the module's class for a subclass whose ``train()`` always means eval: it
    survives ``model.train()``, ``deepcopy`` (EMA) and leaves state-dict keys unchanged.
    """
    n = 0
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in mod.parameters()):
            mod.__class__ = _frozen_class(type(mod))
            mod.eval()
            n += 1
    return n


_FROZEN: dict[type, type] = {}


def _frozen_class(cls: type) -> type:
    if getattr(cls, "_frozen_stats", False):
        return cls
    if cls not in _FROZEN:
        def train(self, mode: bool = True):
            return nn.Module.train(self, False)
        _FROZEN[cls] = type(f"FrozenStats{cls.__name__}", (cls,), {"train": train, "_frozen_stats": True})
    return _FROZEN[cls]


def adapt_model(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """Set ``requires_grad`` for ``cfg.mode`` (and inject adapters for the peft modes); in place."""
    if cfg.mode == "full":
        return model
    if cfg.mode in PEFT_MODES:
        inject_adapters(model, cfg)
    else:
        head = classifier_prefix(model)
        keep: set[str] = set()
        if cfg.mode == "partial":
            blocks = param_blocks(model)
            if cfg.blocks > len(blocks):
                raise UserError(f"adapt.blocks={cfg.blocks} but {type(model).__name__} has only {len(blocks)} "
                                 f"blocks; use at most {len(blocks)} (or adapt.mode=full)")
            keep = {n for b in blocks[-cfg.blocks:] for n in b}
        elif cfg.mode == "bitfit":  # BitFit (Ben Zaken et al., 2022): bias terms only
            keep = {n for n, _ in model.named_parameters() if n.endswith("bias")}
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep or _in(name, head))
    if cfg.bn_stats == "frozen" or (cfg.bn_stats == "auto" and cfg.mode == "linear"):
        _freeze_norm_stats(model)
    return model


def lr_scales(model: nn.Module, cfg: AdaptConfig) -> dict[str, float]:
    """Per-parameter learning-rate multiplier: ``layer_decay ** (blocks above)``, the head at
    ``head_lr`` (layer-wise learning-rate decay, as in BEiT / timm's ``param_groups_layer_decay``),
    times ``lora.lr_ratio_b`` on LoRA's B factors (LoRA+)."""
    scales: dict[str, float] = {}
    if cfg.layer_decay < 1.0:
        blocks = param_blocks(model)
        scales = {n: cfg.layer_decay ** (len(blocks) - i) for i, b in enumerate(blocks) for n in b}
    if cfg.head_lr != 1.0:
        head = classifier_prefix(model)
        scales.update({n: cfg.head_lr for n, _ in model.named_parameters() if _in(n, head)})
    if cfg.mode == "lora" and cfg.lora.lr_ratio_b != 1.0:
        for n, p in model.named_parameters():
            if ".lora_B." in n and p.requires_grad:
                scales[n] = scales.get(n, 1.0) * cfg.lora.lr_ratio_b
    return scales


def param_summary(model: nn.Module) -> dict:
    """Trainable and total parameter counts (what the report states for every mode)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_pct": round(100.0 * trainable / max(total, 1), 3)}
