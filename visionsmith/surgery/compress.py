"""Pruning: unstructured magnitude pruning and structured channel pruning of a trained model.

Two kinds, with different promises:

  - **unstructured** (``torch.nn.utils.prune``): the smallest-magnitude weights of every Conv2d and
    Linear outside the classifier are set to zero (Han et al., 2015, "Learning both Weights and
    Connections for Efficient Neural Networks", arXiv:1506.02626).  While fine-tuning, each layer
    holds ``weight_orig`` and a 0/1 ``weight_mask`` (PyTorch's reparametrisation, so pruned weights
    stay zero under the optimizer); ``make_permanent`` folds them back into a plain ``weight``
    (``prune.remove``).  The tensors keep their shapes: the file is as large and a dense kernel
    as slow as before.  What it buys is sparsity a sparse format or sparse kernel could use.
  - **structured** (``torch-pruning``, Fang et al., 2023, "DepGraph: Towards Any Structural
    Pruning", arXiv:2301.12900): whole output channels are removed, with everything that depends on
    them (the next layer's inputs, BatchNorm, residual additions, depthwise groups, the flatten in
    front of a dense layer) found by tracing the model once.  The layers really are narrower, so
    parameters, file size and compute all fall.  Channels are ranked by the group's L1 or L2
    weight norm (``importance``); the classifier's outputs are never pruned (they are the classes).

A structurally pruned model no longer has the architecture its config builds.  It is stored as
a plain safetensors state dict like any run, and ``reshape_to_state_dict`` narrows a freshly
built model to the shapes in that file before it is loaded (``engine.build.load_trained``): no
pickled module, no second architecture description to keep in sync.

``amount`` is the fraction removed, in [0, 1): of each layer's channels (structured, ``scope``
"layer"), of each layer's weights (unstructured, "layer"), or of all of them ranked together
("global").
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from ..errors import UserError
from ..models._base import classifier_prefix

KINDS = ("structured", "unstructured")


def check_amount(amount) -> float:
    """``amount`` as a float in [0, 1), or a ValueError naming it (1 would remove everything)."""
    try:
        a = float(amount)
    except (TypeError, ValueError):
        raise UserError(f"pruning amount {amount!r} is not a number; give a fraction in [0, 1), e.g. 0.5") from None
    if not 0.0 <= a < 1.0:
        raise UserError(f"pruning amount {amount!r} is outside [0, 1): it is the fraction of weights (or channels) "
                         "removed, e.g. 0.5 for half; 1 would remove all of them")
    return a


def _classifier(model: nn.Module) -> nn.Module:
    return model.get_submodule(classifier_prefix(model))


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear outside the classifier, in model order."""
    head = classifier_prefix(model)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not (n == head or n.startswith(head + "."))]


# ---------------------------------------------------------------------------------------------
# Unstructured


def prune_unstructured(model: nn.Module, amount: float, scope: str = "layer") -> nn.Module:
    """Zero the ``amount`` smallest-|w| weights of each prunable layer (``scope="layer"``) or of all
    of them together (``"global"``); in place, masks attached (``weight_orig`` / ``weight_mask``)."""
    amount = check_amount(amount)
    layers = [m for _, m in prunable_layers(model)]
    if not layers:
        raise UserError(f"{type(model).__name__} has no Conv2d or Linear layer outside its classifier to prune")
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    elif scope == "layer":
        for m in layers:
            tprune.l1_unstructured(m, "weight", amount=amount)
    else:
        raise UserError(f"pruning scope {scope!r} is not 'layer' or 'global'")
    # prune leaves ``weight = weight_orig * weight_mask`` as a non-leaf tensor, which deepcopy (the
    # EMA's copy of the model) refuses.  The same product made without autograd is a leaf; the
    # forward pre-hook recomputes it, with gradients, at every call anyway.
    with torch.no_grad():
        for m in layers:
            m.weight = m.weight_orig * m.weight_mask
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (``prune.remove``): plain tensors, zeros kept."""
    for m in model.modules():
        for name in [h._tensor_name for h in m._forward_pre_hooks.values() if isinstance(h, tprune.BasePruningMethod)]:
            tprune.remove(m, name)
    return model


def fold_masks(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict written while masks were attached (``x.weight_orig``, ``x.weight_mask``) as the
    plain one ``prune.remove`` would give (``x.weight = orig * mask``); other dicts unchanged."""
    out = dict(sd)
    for k in [k for k in sd if k.endswith("_orig") and k[:-5] + "_mask" in sd]:
        base = k[:-5]
        out[base] = out.pop(k) * out.pop(base + "_mask")
    return out


def sparsity(model: nn.Module) -> dict:
    """Fraction of exactly-zero weights: ``layers`` {name: fraction} and ``pruned_layers`` over the
    prunable layers' weights together; ``all_params`` over every parameter of the model."""
    per, zeros, total = {}, 0, 0
    for name, m in prunable_layers(model):
        w = m.weight.detach()  # with masks attached this is orig * mask
        z = int((w == 0).sum())
        per[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    # Parameters of masked layers are ``weight_orig`` (not zero): count the masked weights instead.
    all_zero, all_n = zeros, total
    counted = {id(m.weight_orig if hasattr(m, "weight_orig") else m.weight) for _, m in prunable_layers(model)}
    for p in model.parameters():
        if id(p) not in counted:
            all_zero, all_n = all_zero + int((p.detach() == 0).sum()), all_n + p.numel()
    return {"pruned_layers": zeros / max(total, 1), "all_params": all_zero / max(all_n, 1), "layers": per}


# ---------------------------------------------------------------------------------------------
# Structured


def prune_structured(model: nn.Module, amount: float, example_inputs: torch.Tensor, importance: str = "l2",
                     scope: str = "layer") -> nn.Module:
    """Remove ``amount`` of the output channels of every prunable layer (``scope="layer"``; coupled
    layers, e.g. the two sides of a residual add, lose the same channels) or the least important
    ``amount`` of all channels ranked together (``"global"``, at most 90% of any one layer); in place.

    ``example_inputs``: one input ``[1, C, H, W]`` to trace the model's dependencies with.
    ``importance``: ``"l2"`` (group L2 norm, DepGraph's default) or ``"l1"`` (filter L1 norm,
    Li et al., 2017, arXiv:1608.08710).  ``model.num_features`` follows the classifier's new input.
    """
    import torch_pruning as tp
    amount = check_amount(amount)
    if importance not in ("l1", "l2"):
        raise UserError(f"pruning importance {importance!r} is not 'l1' or 'l2'")
    if scope not in ("layer", "global"):
        raise UserError(f"pruning scope {scope!r} is not 'layer' or 'global'")
    clf = _classifier(model)
    was_training = model.training
    model.eval()  # tracing runs a forward: keep BatchNorm statistics and dropout out of it
    try:
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=tp.importance.GroupMagnitudeImportance(
            p=1 if importance == "l1" else 2), pruning_ratio=amount, global_pruning=scope == "global",
            max_pruning_ratio=max(amount, 0.9), ignored_layers=[clf])
        pruner.step()
    except Exception as e:  # noqa: BLE001 - the tracer's errors say little about the model itself
        raise UserError(f"structured pruning cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
                         "use unstructured pruning for this model") from None
    model.train(was_training)
    if isinstance(clf, nn.Linear) and hasattr(model, "num_features"):
        model.num_features = clf.in_features  # reset_classifier builds a head of this width
    return model


def reshape_to_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Narrow ``model``'s Conv2d, BatchNorm2d and Linear layers in place to the shapes in ``sd``
    (a structurally pruned model's state dict), so that ``sd`` then loads strictly.

    Only sizes change: each module keeps its class (``SameConv2d`` keeps its padding) and its place,
    so the forward code runs unchanged.  A depthwise conv (``groups == in == out``) stays depthwise
    with the new channel count.  The new tensors are uninitialised: load ``sd`` right after.
    """
    def fresh(t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        return torch.empty(like.shape, dtype=t.dtype, device=t.device)

    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        w = sd.get(pre + "weight")
        if isinstance(m, nn.Conv2d) and w is not None and w.shape != m.weight.shape:
            depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
            if not depthwise and m.groups != 1:
                raise UserError(f"{name}: cannot resize a grouped conv (groups={m.groups}) from a state dict")
            m.out_channels = w.shape[0]
            m.groups = w.shape[0] if depthwise else 1
            m.in_channels = w.shape[0] if depthwise else w.shape[1]
        elif isinstance(m, nn.Linear) and w is not None and w.shape != m.weight.shape:
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and pre + "running_mean" in sd:
            m.num_features = sd[pre + "running_mean"].shape[0]
        else:
            continue
        for key, p in list(m.named_parameters(recurse=False)):
            if pre + key in sd and sd[pre + key].shape != p.shape:
                setattr(m, key, nn.Parameter(fresh(p, sd[pre + key]), requires_grad=p.requires_grad))
        for key, b in list(m.named_buffers(recurse=False)):
            if b is not None and pre + key in sd and sd[pre + key].shape != b.shape:
                setattr(m, key, fresh(b, sd[pre + key]))
    clf = _classifier(model)
    if isinstance(clf, nn.Linear) and hasattr(model, "num_features"):
        model.num_features = clf.in_features
    return model


# ---------------------------------------------------------------------------------------------
# After pruning


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimate every BatchNorm's running mean/var from ``batches`` (iterable of model inputs
    ``[B, C, H, W]``), as a plain average over them; returns the images seen.

    Pruning changes what reaches each BatchNorm, so the statistics it kept from training are wrong
    for the pruned model; re-estimating them costs a few forward passes and trains no weight (on
    digits, half the channels removed: 0.70 -> 0.85 test accuracy before any fine-tuning).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.eval()
    for m in bns:
        m.train()  # only the norms: dropout and stochastic depth stay off
    n = 0
    for x in batches:
        model(x)
        n += len(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return n


# ---------------------------------------------------------------------------------------------
# Size


def count_params(model: nn.Module) -> int:
    """Parameters of the model (a masked layer counts its full ``weight_orig``)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``example_inputs`` [B, C, H, W], per image, summed over
    every Conv2d (``out elements x in/groups x kh x kw``) and Linear (``out elements x in``).

    Counted with forward hooks on ``isinstance`` checks, so subclasses (EfficientNet's ``SameConv2d``)
    count too; pooling, norms and activations are left out (they are not where the time goes)."""
    total = [0]

    def hook(m, inp, out):
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) \
            else m.in_features
        total[0] += out.numel() // out.shape[0] * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total[0])
