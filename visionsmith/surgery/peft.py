"""Parameter-efficient fine-tuning: LoRA, LoHa, LoKr and IA3 through Hugging Face ``peft``, and
visual prompt tuning (VPT, Jia et al. 2022), which peft does not have, as a small module here.

Adapters are injected in place (``peft.inject_adapter_in_model``) so the model keeps its class,
its backbone interface and its parameter names; only adapted layers gain ``base_layer`` /
``lora_A.default`` children.  The new classifier always trains too: peft's own ``PeftModel``
loses a replaced head on reload unless it is listed in ``modules_to_save``; here the head is part
of the adapter state (``adapter_state``).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..config import AdaptConfig
from ..errors import UserError
from ..models._base import classifier_prefix

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def candidate_modules(model: nn.Module) -> list[str]:
    """Names of the layers peft can adapt here: Linear and Conv2d outside the classifier.
    Depthwise convolutions (groups > 1) are left out: LoRA's rank-r factorisation of a
    [C,1,k,k] kernel is no smaller than the kernel."""
    head = classifier_prefix(model)
    out = []
    for name, mod in model.named_modules():
        if name == head or name.startswith(head + "."):
            continue
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            out.append(name)
    return out


def resolve_targets(model: nn.Module, targets: list[str] | None, exclude: list[str]) -> list[str]:
    """Module names matching ``targets`` (regexes, full match; None = all candidates) minus ``exclude``.

    A pattern that matches nothing is an error naming what exists, before any training starts."""
    names = candidate_modules(model)
    chosen = names
    if targets is not None:
        chosen = []
        for pat in targets:
            hit = [n for n in names if re.fullmatch(pat, n)]
            if not hit:
                sample = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
                raise UserError(f"adapt.lora.targets: '{pat}' matches no Linear/Conv2d module of "
                                 f"{type(model).__name__}; its module names are: {sample}")
            chosen += [n for n in hit if n not in chosen]
    chosen = [n for n in chosen if not any(re.fullmatch(p, n) for p in exclude)]
    if not chosen:
        raise UserError("adapt.lora: no module left to adapt after adapt.lora.exclude; loosen the patterns")
    return chosen


def _peft_config(cfg: AdaptConfig, targets: list[str]):
    import peft
    lc = cfg.lora
    if cfg.mode == "lora":
        return peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                               rank_pattern=dict(lc.rank_pattern), alpha_pattern=dict(lc.alpha_pattern),
                               bias=lc.bias, use_dora=lc.dora)
    if cfg.mode == "loha":
        return peft.LoHaConfig(r=lc.r, alpha=lc.alpha, module_dropout=lc.dropout, target_modules=targets,
                               rank_pattern=dict(lc.rank_pattern), alpha_pattern=dict(lc.alpha_pattern))
    if cfg.mode == "lokr":
        return peft.LoKrConfig(r=lc.r, alpha=lc.alpha, module_dropout=lc.dropout, target_modules=targets,
                               rank_pattern=dict(lc.rank_pattern), alpha_pattern=dict(lc.alpha_pattern))
    # IA3 (Liu et al. 2022): a learned per-channel scale on each target's output
    return peft.IA3Config(target_modules=targets, feedforward_modules=[])


class VisualPrompt(nn.Module):
    """VPT-shallow: ``tokens`` [1, P, D] inserted after the CLS token of the embedding output.

    A forward hook on the embeddings turns ``[B, 1+N, D]`` into ``[B, 1+P+N, D]``; the encoder
    then attends over the prompts too.  The hook is a bound method of this module, so a deepcopy
    of the model (EMA) carries a hook bound to the copy's own tokens.
    """

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(1, num_tokens, dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)

    def hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        t = self.tokens.expand(output.shape[0], -1, -1).to(output.dtype)
        return torch.cat([output[:, :1], t, output[:, 1:]], dim=1)


def _add_prompts(model: nn.Module, n: int) -> None:
    emb = getattr(getattr(model, "backbone", None), "embeddings", None)
    dim = getattr(getattr(getattr(model, "backbone", None), "config", None), "hidden_size", None)
    if emb is None or dim is None:
        raise UserError(f"adapt.mode=prompt needs a ViT-style transformers model (backbone.embeddings, e.g. "
                         f"vit_tiny or hf_vision); {type(model).__name__} has none; use adapt.mode=lora instead")
    model.prompt = VisualPrompt(n, dim)
    emb.register_forward_hook(model.prompt.hook)


def inject_adapters(model: nn.Module, cfg: AdaptConfig) -> None:
    """Freeze the model, add the adapters for ``cfg.mode``, keep the classifier trainable; in place."""
    head = classifier_prefix(model)
    if cfg.mode == "prompt":
        model.requires_grad_(False)
        _add_prompts(model, cfg.prompt_tokens)
    else:
        import peft
        targets = resolve_targets(model, cfg.lora.targets, cfg.lora.exclude)
        peft.inject_adapter_in_model(_peft_config(cfg, targets), model)  # freezes all but the adapters
    for name, p in model.named_parameters():
        if name == head or name.startswith(head + "."):
            p.requires_grad_(True)
    if cfg.lora.norm:
        for mod in model.modules():
            if isinstance(mod, NORM_LAYERS):
                mod.requires_grad_(True)  # affine scale and shift (BN running statistics are buffers)
    for pat in cfg.lora.train_full:
        # peft wraps an adapted layer as NAME.base_layer: match the name the user sees in `visionsmith models`
        hit = [m for n, m in model.named_modules() if re.fullmatch(pat, n.replace(".base_layer", ""))
               and not any(k in n for k in ("lora_", "hada_", "lokr_", "ia3_"))]
        if not hit:
            raise UserError(f"adapt.lora.train_full: '{pat}' matches no module of {type(model).__name__}; "
                             f"`visionsmith models NAME` lists the module names")
        for m in hit:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)


def adapter_state(model: nn.Module, with_norm_stats: bool) -> dict[str, torch.Tensor]:
    """What an adapter file holds: every trainable parameter (adapters + head) and, when the run
    updated BatchNorm statistics, those buffers too (without them the adapter would not reproduce
    the trained model's outputs).  Keys are the adapted model's own."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    if with_norm_stats:
        for mname, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                keep |= {f"{mname}.{b}" for b, _ in mod.named_buffers(recurse=False)}
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k in keep}


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every peft adapter into its base layer and put the plain layer back; in place.

    The result has the base model's parameter names, so it loads into a model built with
    ``adapt.mode=full``.  Visual prompts are extra tokens, not a weight update: they cannot merge.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    if hasattr(model, "prompt"):
        raise UserError("visual prompts are extra input tokens and cannot be merged into the weights; "
                         "the run's own weights already serve as they are")
    tuners = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if not tuners:
        raise UserError("this model has no peft adapters to merge (was it trained with adapt.mode=lora, "
                         "loha, lokr or ia3?)")
    # W + delta is formed in float64 and rounded once: each merged weight is then the float32 nearest
    # the exact sum.  On the measured LoRA run this takes the logit difference from 1.1e-5 to 8.7e-6,
    # below the 1.05e-5 by which the adapter model's own float32 logits differ from float64.
    dtype = next(model.parameters()).dtype
    model.double()
    for name, mod in tuners:
        mod.merge(safe_merge=True)  # safe_merge: refuse NaN/inf instead of writing them
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod.get_base_layer())
    model.to(dtype)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
