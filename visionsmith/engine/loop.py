"""The training loop: one readable function.

Exactness on resume comes from making every random draw a pure function of (seed, epoch,
batch, rank): the epoch's permutation, each batch's augmentation and the dropout seed of each
step.  Together with the learning rate as a function of the step, a checkpoint needs only the
weights, the optimizer, the EMA and a few counters to continue bit for bit.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, save_config, to_dict
from ..data.leaks import find_leaks, leak_warning
from ..errors import UserError
from ..methods import build_method, method_spec
from ..models.weights import load_strict
from ..surgery.transfer import param_summary
from ..tasks import batch_to, get_task
from . import distributed as D
from .build import (
    autocast_dtype,
    build_model,
    build_optimizer,
    build_teacher,
    build_transforms,
    lr_at,
)
from .checkpoint import load_checkpoint, never_checkpointed, save_checkpoint, save_weights
from .ema import ModelEMA
from .flops import training_flops_record
from .runfolder import (
    MetricsLog,
    command_line,
    environment,
    git_info,
    new_run_dir,
    peak_memory_mb,
    truncate_metrics,
    update_run_json,
)


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style mixing, stable across Python versions)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _epoch_perm(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_seed_for(seed, 1, epoch)))


def _method_extra_state(method: nn.Module) -> dict:
    """The method's own trained state (e.g. a distillation projector): everything but the model,
    which the checkpoint holds as its weights, and the teacher, which is re-read from its source."""
    return {k: v for k, v in method.state_dict().items() if not k.startswith(("model.", "teacher."))}


def _optimizer_state(opts: dict) -> dict:
    """One optimizer's state dict as before; several as ``{phase: state dict}``."""
    return opts[None].state_dict() if None in opts else {ph: o.state_dict() for ph, o in opts.items()}


def _load_optimizers(opts: dict, state: dict) -> None:
    if None in opts:
        opts[None].load_state_dict(state)
    else:
        for ph, o in opts.items():
            o.load_state_dict(state[ph])


def _step(ddp, batch: dict, opts: dict, clip: dict, lr: float, ctx, scaler, grad_clip: float, step: int):
    """One optimizer step of each phase in turn (one phase for most methods).  ``clip[phase]``: the
    parameters its gradient clipping covers.  Returns the merged output dicts of the phases and the last
    phase's loss (what the log calls ``loss``; a GAN's other phase reports its own as ``loss_d``)."""
    merged: dict = {}
    for ph, opt in opts.items():
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)  # absent in checkpoints written before layer decay
        with ctx():
            out = ddp(batch) if ph is None else ddp(batch, phase=ph)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss{'' if ph is None else ' of phase ' + ph} is {loss.item()} at step {step}; "
                                     f"lower train.lr (the rate at this step: {lr:.3g}) or set train.grad_clip")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(clip[ph], grad_clip)
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
        merged.update(out)
    if scaler is not None:
        scaler.update()
    return merged, loss


def fit(cfg: Config, out: str | Path | None = None, resume: str | Path | None = None,
        stop_after_steps: int | None = None) -> Path:
    """Train ``cfg`` into a new run folder ``out`` (or continue the run folder ``resume``).

    ``stop_after_steps`` ends the process's work after that many steps without finishing the run
    (used to test resume); the run folder is left as a crash would leave it.
    Returns the run folder.  Test evaluation and the report are the caller's (``visionsmith.api``).
    """
    d, device = D.init(cfg.device)
    if stop_after_steps is None and os.environ.get("VISIONSMITH_STOP_AFTER_STEPS"):
        # A simulated crash for resume tests of launched jobs (torchrun), where no Python caller exists.
        stop_after_steps = int(os.environ["VISIONSMITH_STOP_AFTER_STEPS"])
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t = cfg.train

    # -- run folder (rank 0 names it; every rank learns the path) ---------------------------
    if resume is not None:
        run_dir = Path(resume)
    else:
        run_dir = Path(D.broadcast_object(str(new_run_dir(cfg.name, out)) if d.main else None, d))

    # -- data and model (every rank builds the same, deterministically) ---------------------
    task, spec = get_task(cfg), method_spec(cfg.method)
    try:
        data = task.build_datasets(cfg.seed)
    except BaseException:
        if resume is None and d.main and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # bad data (e.g. --strict): leave no empty run folder behind
        raise
    train_ds, val_ds = data["train"], data.get("val")
    classes = train_ds.classes
    torch.manual_seed(cfg.seed)  # the new head's init
    model = build_model(cfg, len(classes)).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_tf, eval_tf = build_transforms(cfg, model)
    teacher = build_teacher(cfg, classes, device) if spec.teacher else None
    method = build_method(cfg, model, task, teacher=teacher).to(device)
    # One optimizer, or one per phase for a method that alternates them (a GAN: discriminator, then
    # generator); each phase's optimizer covers the parameters the method names for it.
    phases = getattr(method, "phases", None) or (None,)
    opts = {ph: build_optimizer(cfg, method) if ph is None else build_optimizer(cfg, method, **method.phase_optim(ph))
            for ph in phases}
    # What each optimizer's clipping covers (a distillation projector's parameters too), in the method's
    # parameter order: the global norm sums them in this order, so the order is part of the result.
    stepped = {ph: {id(q) for g in o.param_groups for q in g["params"]} for ph, o in opts.items()}
    clip = {ph: [p for p in method.parameters() if id(p) in ids] for ph, ids in stepped.items()}
    ema = ModelEMA(model, t.ema_decay) if t.ema else None
    amp_dtype = autocast_dtype(t.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ddp = nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=len(opts) > 1) if d.enabled else method

    # The monitored metric: the early-stop setting, else the task's headline (val/acc, val/miou).
    monitor = t.early_stop.metric or f"val/{task.headline}"
    mode = t.early_stop.mode or task.direction
    per_step = t.batch_size * d.world  # images per optimizer step, all ranks together
    steps_per_epoch = len(train_ds) // per_step
    if steps_per_epoch == 0:
        raise UserError(f"train.batch_size={t.batch_size} x {d.world} process(es) is larger than the "
                         f"{len(train_ds)} training images; lower train.batch_size")
    total_steps = t.epochs * steps_per_epoch if t.max_steps is None else min(t.max_steps, t.epochs * steps_per_epoch)

    # -- state: fresh, or from the last committed checkpoint ---------------------------------
    step, epoch, start_batch, best, bad_epochs = 0, 0, 0, None, 0
    train_time = 0.0
    if resume is not None and never_checkpointed(run_dir / "checkpoints"):
        # killed before its first checkpoint: nothing to continue from, so it starts again at step 0
        print(f"{run_dir} stopped before its first checkpoint: training it from step 0", flush=True)
        if d.main:
            truncate_metrics(run_dir / "metrics.jsonl", 0)
    elif resume is not None:
        weights, state, _ = load_checkpoint(run_dir / "checkpoints")
        load_strict(model, weights, f"checkpoint {run_dir / 'checkpoints' / 'last.safetensors'} (config {cfg.model.name})")
        if state.get("method"):
            method.load_state_dict({**method.state_dict(), **state["method"]})
        _load_optimizers(opts, state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, start_batch = state["step"], state["epoch"], state["batch"]
        best, bad_epochs, train_time = state["best"], state["bad_epochs"], state["train_time"]
        if d.main:
            truncate_metrics(run_dir / "metrics.jsonl", step)
    if d.main:
        leaks = find_leaks(data)  # test images that are also training images (an optimistic score)
        if (warning := leak_warning(leaks)) and resume is None:
            print(warning, flush=True)
        save_config(cfg, run_dir / "config.yaml")
        update_run_json(run_dir, name=cfg.name, status="running", seed=cfg.seed, task=cfg.task, method=cfg.method,
                        adapt=cfg.adapt.mode, git=git_info(),
                        env=environment(device), params=param_summary(model), classes=classes,
                        data={"name": train_ds.name, "channels": int(train_ds.images.shape[1]),
                              "train": len(train_ds), "val": len(val_ds) if val_ds is not None else 0,
                              "test": len(data["test"]) if "test" in data else 0,
                              "skipped": [list(s) for ds in data.values() for s in ds.skipped], "leaks": leaks},
                        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                        # The command that made the run stays; a resume is recorded beside it.
                        **({"command": command_line()} if resume is None else {"resumed_by": command_line()}))
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=d.main)
    eval_model = lambda: ema.module if ema is not None else model  # noqa: E731

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        if d.main:
            state = {"step": step, "epoch": next_epoch, "batch": next_batch, "best": best, "bad_epochs": bad_epochs,
                     "train_time": train_time, "optimizer": _optimizer_state(opts),
                     "ema": ema.state_dict() if ema is not None else {},
                     "scaler": scaler.state_dict() if scaler is not None else {}, "config": to_dict(cfg),
                     "method": _method_extra_state(method)}
            save_checkpoint(run_dir / "checkpoints", model.state_dict(), state,
                            {"step": step, "epoch": next_epoch, "classes": classes, "model": cfg.model.name})
        D.barrier(d)

    # SIGTERM (a scheduler's pre-emption) becomes a clean stop at the next step boundary.
    stop_requested = []
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal() works only there
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(1)) \
        if d.main and in_main_thread else None

    method.train()
    status, done = "done", False
    ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    try:
        while epoch < t.epochs and step < total_steps and not done:
            perm = _epoch_perm(cfg.seed, epoch, len(train_ds))
            bar = tqdm(total=steps_per_epoch * per_step, initial=start_batch * per_step, unit="img",
                       unit_scale=True, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not d.main, dynamic_ncols=True)
            loss_sum, loss_n, t_log = 0.0, 0, time.perf_counter()
            parts: dict[str, float] = {}  # a method's other scalars, summed between log lines
            for b in range(start_batch, steps_per_epoch):
                t0 = time.perf_counter()
                # This rank's slice of the global batch b: images uint8 [B,C,h,w] -> "image" [B,C,S,S] float,
                # and the task's target (moved by the same augmentation).
                idx = perm[b * per_step + d.rank * t.batch_size: b * per_step + (d.rank + 1) * t.batch_size]
                gen = torch.Generator().manual_seed(_seed_for(cfg.seed, 2, epoch, b, d.rank))
                batch = batch_to(task.make_batch(train_ds, idx, train_tf, gen), device)
                if t.channels_last:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                # Dropout etc.: a function of the step.  Seeding only the generators in use; torch.manual_seed
                # also walks every accelerator backend (~90 us a step on CPU).
                torch.default_generator.manual_seed(_seed_for(cfg.seed, 3, step, d.rank))
                if device.type == "cuda":
                    torch.cuda.manual_seed(_seed_for(cfg.seed, 3, step, d.rank))
                lr = lr_at(cfg, step, total_steps, steps_per_epoch)
                out, loss = _step(ddp, batch, opts, clip, lr, ctx, scaler, t.grad_clip, step)
                if ema is not None:
                    ema.update(model)
                step += 1
                dt = time.perf_counter() - t0
                train_time += dt
                loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
                for k, v in out.items():  # a method's scalars beside the loss (loss_kd, bits_per_dim, ...)
                    if k != "loss" and isinstance(v, torch.Tensor) and v.ndim == 0:
                        parts[k] = parts.get(k, 0.0) + float(v)
                bar.update(per_step)
                if step % t.log_every == 0 or b == steps_per_epoch - 1 or step >= total_steps:
                    elapsed = time.perf_counter() - t_log
                    ips = loss_n * per_step / max(elapsed, 1e-9)
                    mean_loss = D.mean_scalar(loss_sum / loss_n, d, device)
                    log.log(split="train", step=step, epoch=epoch + (b + 1) / steps_per_epoch, loss=mean_loss,
                            lr=lr, img_per_s=ips, time=train_time, **{k: v / loss_n for k, v in parts.items()})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    loss_sum, loss_n, t_log, parts = 0.0, 0, time.perf_counter(), {}
                last_in_epoch = b == steps_per_epoch - 1
                if t.checkpoint_every and step % t.checkpoint_every == 0 and not last_in_epoch:
                    checkpoint(epoch, b + 1)
                if stop_after_steps is not None and step >= stop_after_steps:
                    return run_dir  # simulated crash: no final checkpoint, no status change
                # Under DDP the ranks agree on stopping at log steps only: a broadcast per step costs latency.
                if (not d.enabled or step % t.log_every == 0) and D.broadcast_object(bool(stop_requested), d):
                    checkpoint(epoch, b + 1)
                    status, done = "interrupted", True
                    break
                if step >= total_steps:
                    done = True
                    break
            bar.close()
            if status == "interrupted":
                break
            epoch_finished = b == steps_per_epoch - 1
            if epoch_finished:
                epoch, start_batch = epoch + 1, 0
            else:  # max_steps reached mid-epoch
                start_batch = b + 1

            # -- validation, early stopping, best weights: rank 0, shared decision --------
            improved, stop = False, False
            if d.main and val_ds is not None and len(val_ds):
                if hasattr(method, "evaluate"):  # the method's own monitor (self-supervised: kNN accuracy)
                    m = method.evaluate(eval_model(), train_ds, val_ds, eval_tf, t.eval_batch_size, device)
                else:
                    full = task.evaluate(eval_model(), val_ds, eval_tf, t.eval_batch_size, device, t.channels_last,
                                         amp_dtype)
                    task.val_artifacts(run_dir, epoch if epoch_finished else epoch + start_batch / steps_per_epoch, full)
                    m = {k: v for k, v in full.items() if k in task.val_keys}
                row = {"split": "val", "step": step, "epoch": epoch if epoch_finished else epoch + start_batch / steps_per_epoch,
                       **m}
                log.log(**row)
                tqdm.write(f"epoch {epoch}: val " + "  ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)))
                es = t.early_stop
                value = row.get(monitor.split("/", 1)[-1])
                if value is not None and (best is None or (value > best if mode == "max" else value < best)):
                    best, bad_epochs, improved = value, 0, True
                else:
                    bad_epochs += 1
                stop = bool(es.patience) and bad_epochs >= es.patience
                if improved or t.select == "last":
                    save_weights(run_dir / "checkpoints" / "best.safetensors", eval_model().state_dict(),
                                 {"step": step, "epoch": epoch, monitor: value, "classes": classes,
                                  "model": cfg.model.name})
            elif d.main:
                save_weights(run_dir / "checkpoints" / "best.safetensors", eval_model().state_dict(),
                             {"step": step, "epoch": epoch, "classes": classes, "model": cfg.model.name})
            checkpoint(epoch, start_batch)
            if D.broadcast_object(stop, d):
                status, done = "stopped_early", True
                if d.main:
                    tqdm.write(f"early stop: {monitor} has not improved for {bad_epochs} epochs")
    except BaseException:
        if d.main:
            update_run_json(run_dir, status="failed")
        raise
    finally:
        log.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if d.main:
        img_per_s, peak_mem = round(step * per_step / max(train_time, 1e-9), 1), peak_memory_mb(device)
        # Training FLOPs per image (one forward of one image) and the machine's matmul peak: how much of
        # the machine the run used.  Never fails the run: a null figure and a reason instead.
        # the model's own input shape, as the task makes it (a super-resolution model sees image_size / scale)
        in_shape = tuple(task.make_batch(train_ds, torch.arange(1), eval_tf, torch.Generator().manual_seed(0))
                         ["image"].shape[1:])
        flops, flop_timing = training_flops_record(
            model, in_shape, device,
            img_per_s if step else None, d.world, cfg.method, amp_dtype or torch.float32)
        update_run_json(run_dir, status=status, timing={"train_s": round(train_time, 2),
                        "train_img_per_s": img_per_s, "peak_mem_mb": peak_mem, **flop_timing},
                        flops=flops, steps_done=step)
    D.barrier(d)
    return run_dir
