"""Build the pieces of a run from its config: model, transforms, optimizer, schedule."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import Config, PruneConfig
from ..data import BatchTransform
from ..errors import UserError
from ..models import create_model
from ..models.weights import load_strict
from ..surgery.compress import (
    fold_masks,
    prune_structured,
    prune_unstructured,
    recalibrate_batchnorm,
    reshape_to_state_dict,
)
from ..surgery.transfer import adapt_model, lr_scales
from ..tasks import get_task
from .checkpoint import CheckpointError, load_weights, read_meta


def build_model(cfg: Config, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
    """The task's model (backbone + its head for ``num_classes``; pretrained weights loaded strictly first),
    adapted for ``cfg.adapt`` (frozen parts, peft adapters): the same module tree in training and
    whenever the run folder is loaded again.

    A pruning run (``cfg.prune.source``) starts from that run's trained model, pruned (``pruned_from_source`` below);
    with ``pretrained=False`` (reloading a run) it is the unpruned architecture, which ``load_trained``
    narrows to the checkpoint's shapes."""
    if cfg.prune.source and pretrained is not False:
        return pruned_from_source(cfg, num_classes)
    return adapt_model(get_task(cfg).build_model(num_classes, pretrained), cfg.adapt)


def build_transforms(cfg: Config, model: nn.Module | None = None) -> tuple[BatchTransform, BatchTransform]:
    """(train, eval) batch transforms: uint8 images -> [0, 1] pixels at ``data.image_size`` with
    ``model.in_chans`` channels.  The model normalises the pixels itself (``model.pixel_norm``), so
    ``model`` is not needed (the parameter stays for the callers that pass it)."""
    mk = lambda train: BatchTransform(train, cfg.data.image_size, cfg.model.in_chans, cfg.data.augment)
    return mk(True), mk(False)


def build_optimizer(cfg: Config, method: nn.Module, only=None, lr_scale: float = 1.0,
                    betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD over the method's trainable parameters (the model's and the method's own, e.g. a
    distillation projector); no weight decay on biases and norm scales (1-D parameters); one
    group per layer-decay learning-rate scale (``lr_scale``, applied by the loop each step).

    A method with several phases (a GAN) builds one per phase: ``only(name)`` picks the phase's
    parameters, ``lr_scale`` multiplies its learning rate, ``betas`` replaces Adam's (0.9, 0.999)."""
    model = getattr(method, "model", method)
    scales = {f"model.{k}" if model is not method else k: v for k, v in lr_scales(model, cfg.adapt).items()}
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in method.named_parameters():
        if p.requires_grad and (only is None or only(name)):
            buckets.setdefault((scales.get(name, 1.0) * lr_scale, p.ndim <= 1), []).append(p)
    if not buckets:
        raise UserError("nothing to train: every parameter is frozen; check adapt.mode")
    groups = [{"params": ps, "lr_scale": scale, "weight_decay": 0.0 if no_decay else cfg.train.weight_decay}
              for (scale, no_decay), ps in sorted(buckets.items())]
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0)
    # fused: one kernel over all parameters, ~5% of a MobileNetV2 step on CPU (deterministic as well)
    return torch.optim.AdamW(groups, lr=t.lr, fused=True, **({"betas": tuple(betas)} if betas else {}))


def lr_at(cfg: Config, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``; a pure function of the step,
    so the schedule needs no state of its own to resume exactly."""
    t = cfg.train
    warm = int(t.warmup_epochs * steps_per_epoch)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """None = full precision.  auto: bf16 on CUDA where supported, else fp16; off on CPU
    (CPU bf16 without AMX is slower than fp32)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def load_trained(run_dir, which: str = "best", device: torch.device | str = "cpu"):
    """(config, model with the run's weights, classes, run.json) from a run folder.

    ``which``: "best" (falls back to "last" when no best was written) or "last".
    """
    from ..config import ConfigError, load_config
    from .runfolder import read_json

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml); pass the folder that "
                              "`visionsmith train` printed")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}/config.yaml: {e}") from None
    ck = run_dir / "checkpoints"
    path = ck / f"{which}.safetensors"
    if which == "best" and not path.is_file():
        path = ck / "last.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no weights yet (no checkpoints/best.safetensors or "
                              "last.safetensors): the run stopped before its first epoch ended")
    meta = read_meta(path)
    info = read_json(run_dir / "run.json")
    classes = meta.get("classes") if meta.get("classes") is not None else info.get("classes")
    if classes is None or (not classes and get_task(cfg).has_classes):  # [] is right for enhancement only
        raise CheckpointError(f"{path} does not record its classes; was it written by visionsmith?")
    model = build_model(cfg, len(classes), pretrained=False)
    if cfg.prune.source:  # narrower layers than cfg builds, or pruning masks: no pickled module needed
        load_pruned_weights(model, path)
    else:
        load_weights(model, path)
    return cfg, model.to(device).eval(), classes, info


def build_teacher(cfg: Config, classes: list[str], device: torch.device) -> dict:
    """The distillation teacher, frozen, and the input size and channels it wants (it normalises the
    pixels itself, with its own ``pixel_norm``).

    ``cfg.distill.teacher``: a run folder (its best weights, classes checked against ``classes``)
    or a registered model name (its embedded pretrained weights: useful for feature distillation;
    its ImageNet classes are not the student's, so logit distillation refuses it).
    Returns ``{"model", "size", "in_chans", "source"}``.
    """
    from ..models import get_model_entry
    d = cfg.distill
    src = d.teacher
    if Path(src).is_dir():
        tcfg, model, tclasses, _ = load_trained(src, "best", device)
        if list(tclasses) != list(classes):
            raise UserError(f"distill.teacher {src} was trained on classes {tclasses[:6]}{'...' if len(tclasses) > 6 else ''} "
                             f"({len(tclasses)}) but this run's data has {classes[:6]}{'...' if len(classes) > 6 else ''} "
                             f"({len(classes)}); the teacher must know the same classes in the same order")
        size, in_chans = tcfg.data.image_size, tcfg.model.in_chans
    else:
        try:
            get_model_entry(src)
        except Exception:
            raise UserError(f"distill.teacher {src!r} is neither a run folder nor a registered model "
                             "(`visionsmith models` lists them)") from None
        if d.kind != "feature":
            raise UserError(f"distill.teacher {src!r} is a registered ImageNet model whose classes are not this "
                             f"run's {len(classes)}; use distill.kind=feature with it, or a run folder as teacher")
        model = create_model(src, num_classes=0, pretrained=True).to(device)
        size, in_chans = cfg.data.image_size, 3
    model.eval().requires_grad_(False)
    return {"model": model, "size": size, "in_chans": in_chans, "source": src}


# ---------------------------------------------------------------------------------------------
# Pruning runs: the model is another run's trained model, pruned (surgery/compress.py); a rebuild
# repeats the pruning exactly, so resume works.  The workflow around it lives in workflows/prune.py.

def example_input(cfg: Config) -> torch.Tensor:
    """One input ``[1, in_chans, S, S]`` to trace (and count) the model with."""
    return torch.zeros(1, cfg.model.in_chans, cfg.data.image_size, cfg.data.image_size)


def apply_pruning(model: nn.Module, pc: PruneConfig, example: torch.Tensor) -> nn.Module:
    if pc.kind == "structured":
        return prune_structured(model, pc.amount, example, pc.importance, pc.scope)
    return prune_unstructured(model, pc.amount, pc.scope)


def pruned_from_source(cfg: Config, num_classes: int) -> nn.Module:
    """``cfg.prune.source``'s best weights, pruned per ``cfg.prune`` (``build_model``'s route for a
    pruning run).  The source may itself be pruned: ``load_trained`` reshapes it first."""
    src = Path(cfg.prune.source)
    try:
        scfg, model, classes, _ = load_trained(src)
    except CheckpointError as e:
        raise CheckpointError(f"prune.source: {e}") from None
    if (scfg.model.name, scfg.model.in_chans) != (cfg.model.name, cfg.model.in_chans):
        raise UserError(f"prune.source {src} holds a {scfg.model.name} with {scfg.model.in_chans} input channel(s) "
                         f"but this config builds a {cfg.model.name} with {cfg.model.in_chans}; keep the model "
                         "section of the source run")
    if len(classes) != num_classes:
        raise UserError(f"prune.source {src} classifies {len(classes)} classes but this run's data has "
                         f"{num_classes}; prune with the source run's own data")
    apply_pruning(model, cfg.prune, example_input(cfg))
    if cfg.prune.recalibrate:
        # The first images of the training split, without augmentation: the same every rebuild.
        images = get_task(cfg).build_datasets(cfg.seed)["train"].images[:cfg.prune.recalibrate]
        _, eval_tf = build_transforms(cfg, model)
        recalibrate_batchnorm(model, (eval_tf(images[i:i + 256], None) for i in range(0, len(images), 256)))
    return model.train()


def load_pruned_weights(model: nn.Module, path: Path) -> dict:
    """Load a pruning run's checkpoint into the unpruned ``model`` built from its config: masks
    folded (``fold_masks``), layers narrowed to the file's shapes, then a strict load."""
    meta = read_meta(path)
    sd = fold_masks(load_file(str(path)))
    reshape_to_state_dict(model, sd)
    load_strict(model, sd, f"checkpoint {path}")
    return meta
