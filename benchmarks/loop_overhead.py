"""Training-loop overhead: visionsmith's ``fit`` vs a hand-written PyTorch loop vs ``transformers.Trainer``.

    python benchmarks/loop_overhead.py                 # MobileNetV2 (pretrained), Fashion-MNIST, 32 px
    python benchmarks/loop_overhead.py --task segmentation   # MobileNetV2 + FPN, fashion-mnist scenes, 96 px
    python benchmarks/loop_overhead.py --quick         # smoke run: simple_cnn, a few steps

All three contenders train the same thing, in the same process, with the same torch threads:
the same model (``visionsmith.models.create_model`` with the recipe's arguments, head initialised
from the same seed, channels-last), the same training images (Fashion-MNIST train split from
``build_datasets``, uint8, in memory), the same per-batch augmentation (``BatchTransform``, one
affine warp per image), the same loss (cross-entropy with the recipe's label smoothing, dropout on),
the same optimizer (``torch.optim.AdamW(fused=True)``, the kernel visionsmith uses), batch size
and number of steps.  The base config is ``recipes/fashion-mnist-quick.yaml`` (``--task segmentation``:
``recipes/scenes-seg.yaml``: the task's model -- backbone + FPN decoder --, its batches -- masks moved
by the same affine warp -- and its loss, per-pixel cross-entropy, all taken from the task, as ``fit``
takes them).

What is timed, identically for each contender: the wall-clock time of N optimizer steps that
follow W warm-up steps, i.e. from the end of step W to the end of step W+N.  One step's time
therefore contains everything the loop does between two optimizer steps: indexing the batch out
of the uint8 tensor, augmentation and normalisation, forward, loss, backward, optimizer step, the
learning-rate update and whatever bookkeeping the loop does (progress bar, loss.item(), logging,
callbacks).  Not timed: building data and model, validation, evaluation, checkpoint writing.
Result: images/s = N * batch / that time ("timed window").  Every step is stamped, so the
script also reports batch / the median step time ("median step"): the same yardstick made
robust to a neighbour's job hogging the cores for a few steps of one run.

  * plain: a loop as one writes it by hand (below, ``plain_loop``), with a cosine LambdaLR and a
    ``loss.item()`` per step (as any loop that prints its loss); stamps from ``time.perf_counter``.
  * visionsmith: ``visionsmith.engine.loop.fit(cfg, out=tmp)`` with ``train.max_steps=W+N``,
    ``train.epochs=1`` and ``train.log_every=1``.  The stamp is taken when ``fit`` appends a
    train row to metrics.jsonl (the benchmark wraps ``MetricsLog.log`` to read the clock; the
    loop's code is untouched), so the interval covers the loop's full iteration, bookkeeping
    included.  log_every=1 makes fit write one JSON line and refresh its progress bar every step
    (the recipe does it every 25): a few hundred microseconds a step, charged to visionsmith.
    ``fit``'s own yardstick, the ``time`` column (cumulative per-step time that stops
    before ``loss.item()``, the progress bar and the log write), is reported next to it as
    ``visionsmith_self``.  ``git_info`` is stubbed out (run.json metadata only, outside the timed
    region) so the benchmark runs no git commands.
  * trainer: ``transformers.Trainer`` on the model wrapped in a module returning
    ``{"loss", "logits"}``; the dataset yields indices and the collator gathers the uint8 batch
    and applies the same ``BatchTransform`` (so augmentation is timed, as in the others);
    ``use_cpu=True``, ``optim="adamw_torch_fused"`` (the Trainer's own default and the same fused
    AdamW kernel as the others), ``max_grad_norm=0`` (no clipping, like the
    recipe), cosine schedule, logging/saving/eval off, ``dataloader_num_workers=0``.  Stamps from a
    ``TrainerCallback.on_step_end``; the Trainer fetches the next batch before ``on_step_begin``,
    so step_end-to-step_end intervals include data loading.

EMA on, the recipe as it is: the three above run with EMA off (``train.ema=false``), so that they
measure the loop alone.  The recipes train with EMA on (``train.ema: true``, decay 0.998), so two
more contenders measure that as well (``--no-ema`` leaves them out):

  * plain+ema: the plain loop plus an EMA written by hand the fast way (timm's ``ModelEmaV3``):
    the tensor lists built once, one ``torch._foreach_lerp_`` a step over the float weights and
    buffers (BatchNorm statistics averaged too, as visionsmith does), integer buffers copied, the
    recipe's decay with the same warm-up ``min(decay, (1 + n) / (10 + n))``.
  * visionsmith+ema: ``fit`` with the recipe's ``train.ema`` and ``train.ema_decay``, timed as
    visionsmith above.

Ratios: visionsmith+ema/plain+ema (the loop's overhead with EMA on), visionsmith+ema/visionsmith
and plain+ema/plain (what EMA costs each).

A short untimed plain run warms the process up first.  Contenders then run in rounds,
interleaved and rotated (round r starts with contender r mod the number of contenders), so
slow drift of the shared machine's load hits all of them alike.  Reported: the median images/s
of each over the rounds, the ratios of those medians, and the median of the per-round ratios,
for both measures.  The target (visionsmith >= 0.95x plain) is checked on the timed window.
Absolute numbers on a shared machine are noise; the ratios measured in one run are the result.
Writes ``benchmarks/results/loop_overhead.json`` (``loop_overhead-quick.json`` with --quick).
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from common import cpu_model, loadavg, write_result  # noqa: E402  (benchmarks/common.py)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"classification": ROOT / "recipes" / "fashion-mnist-quick.yaml",
           "segmentation": ROOT / "recipes" / "scenes-seg.yaml"}
CONTENDERS = ("plain", "visionsmith", "trainer", "plain+ema", "visionsmith+ema")  # the last two: EMA on


# -- shared setup --------------------------------------------------------------------------------

def make_config(args, ema: bool = False):
    """The recipe with the benchmark's settings; EMA off unless ``ema`` (then the recipe's decay)."""
    from visionsmith.config import load_config
    from visionsmith.models import get_model_entry
    pretrained = bool(get_model_entry(args.model).pretrained)  # embedded weights where the model has them
    overrides = [f"model.name={args.model}", f"model.pretrained={str(pretrained).lower()}",
                 f"data.image_size={args.image_size}", f"train.batch_size={args.batch_size}",
                 f"train.threads={args.threads}", f"train.max_steps={args.warmup + args.steps}",
                 "train.epochs=1", "train.log_every=1",
                 "train.checkpoint_every=0", f"train.ema={str(ema).lower()}"]
    return load_config(RECIPES[args.task], overrides)


def make_model(cfg, num_classes: int) -> nn.Module:
    """The model as ``fit`` builds it: the task's model (same factory arguments), head initialised from the seed."""
    from visionsmith.tasks import get_task
    torch.manual_seed(cfg.seed)
    model = get_task(cfg).build_model(num_classes)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def make_batch(task, train, idx, tf, gen) -> tuple[torch.Tensor, dict]:
    """(channels-last images, the task's batch dict): what every contender feeds its model and loss."""
    batch = task.make_batch(train, idx, tf, gen)
    return batch["image"].contiguous(memory_format=torch.channels_last), batch


def make_transform(cfg, model):
    """The training transform ([0, 1] pixels; the model normalises them itself, as in the loop)."""
    from visionsmith.data import BatchTransform
    return BatchTransform(True, cfg.data.image_size, cfg.model.in_chans, cfg.data.augment)


def cosine_lambda(cfg, total_steps: int, steps_per_epoch: int):
    warm = int(cfg.train.warmup_epochs * steps_per_epoch)

    def f(step):
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def rates(stamps: dict[int, float], warmup: int, steps: int, batch: int) -> dict:
    """images/s over the timed window, images/s of its median step, and the step times (ms)."""
    dts = [stamps[k + 1] - stamps[k] for k in range(warmup, warmup + steps)]
    return {"img_per_s": steps * batch / (stamps[warmup + steps] - stamps[warmup]),
            "median_step_img_per_s": batch / statistics.median(dts),
            "step_ms": [round(1000 * d, 2) for d in dts]}


# -- (a) the plain loop ------------------------------------------------------------------------

class PlainEMA:
    """EMA as one writes it by hand, the fast way (timm ``ModelEmaV3``): tensor lists built once, one
    ``torch._foreach_lerp_`` per step over float weights and buffers, integer buffers copied; decay
    ``min(decay, (1 + n) / (10 + n))``, as visionsmith's ``ModelEMA``."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.n = decay, 0
        ema, cur = self.module.state_dict(), model.state_dict()
        fl = [k for k, v in ema.items() if v.is_floating_point()]
        other = [k for k, v in ema.items() if not v.is_floating_point()]
        self.ef, self.mf = [ema[k] for k in fl], [cur[k].detach() for k in fl]
        self.eo, self.mo = [ema[k] for k in other], [cur[k].detach() for k in other]

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.ef, self.mf, 1.0 - d)
        if self.eo:
            torch._foreach_copy_(self.eo, self.mo)


def plain_loop(cfg, train, args, ema: bool = False) -> dict:
    t = cfg.train
    from visionsmith.tasks import get_task
    task = get_task(cfg)
    model = make_model(cfg, len(train.classes))
    tf = make_transform(cfg, model)
    B, total = t.batch_size, args.warmup + args.steps
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(cfg, total, len(train) // B))
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(train), generator=gen)
    averaged = PlainEMA(model, t.ema_decay) if ema else None
    model.train()
    stamps = {0: time.perf_counter()}
    for step in range(total):
        idx = perm[step * B:(step + 1) * B]
        x, batch = make_batch(task, train, idx, tf, gen)
        loss = task.loss(model(x).float(), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaged is not None:
            averaged.update()
        sched.step()
        loss.item()
        stamps[step + 1] = time.perf_counter()
    return rates(stamps, args.warmup, args.steps, B)


# -- (b) visionsmith ---------------------------------------------------------------------------

def visionsmith_loop(cfg, train, args, tmp: Path, r: int | str) -> dict:
    from visionsmith.engine import loop as vloop
    from visionsmith.engine import runfolder
    stamps: dict[int, float] = {}
    orig_log, orig_git = runfolder.MetricsLog.log, vloop.git_info

    def log(self, **row):
        if row.get("split") == "train":
            stamps[row["step"]] = time.perf_counter()
        return orig_log(self, **row)

    runfolder.MetricsLog.log = log
    vloop.git_info = lambda: {"rev": None, "dirty": False, "note": "not read by the benchmark"}
    try:
        run_dir = vloop.fit(cfg, out=tmp / f"vs-{r}")
    finally:
        runfolder.MetricsLog.log, vloop.git_info = orig_log, orig_git
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cum = {row["step"]: row["time"] for row in rows if row.get("split") == "train"}
    W, N, B = args.warmup, args.steps, cfg.train.batch_size
    return {**rates(stamps, W, N, B), "self_img_per_s": N * B / (cum[W + N] - cum[W])}


# -- (c) the Hugging Face Trainer ----------------------------------------------------------------

class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _Collate:
    """Indices -> the same augmented, normalised, channels-last batch the other loops build."""

    def __init__(self, task, train, tf, gen):
        self.task, self.train, self.tf, self.gen = task, train, tf, gen

    def __call__(self, idxs):
        x, batch = make_batch(self.task, self.train, torch.as_tensor(idxs), self.tf, self.gen)
        return {"pixel_values": x, "labels": batch[self.task.target_key]}


class _HFWrap(nn.Module):
    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        loss = None if labels is None else self.task.loss(logits.float(), {self.task.target_key: labels})
        return {"loss": loss, "logits": logits}


def trainer_loop(cfg, train, args, tmp: Path, r: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    t = cfg.train
    stamps: dict[int, float] = {}

    class Stamp(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            stamps[0] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            stamps[state.global_step] = time.perf_counter()

    from visionsmith.tasks import get_task
    task = get_task(cfg)
    model = make_model(cfg, len(train.classes))
    tf = make_transform(cfg, model)
    steps_per_epoch = len(train) // t.batch_size
    targs = TrainingArguments(
        output_dir=str(tmp / f"hf-{r}"), use_cpu=True, per_device_train_batch_size=t.batch_size,
        max_steps=args.warmup + args.steps, learning_rate=t.lr, weight_decay=t.weight_decay,
        lr_scheduler_type="cosine", warmup_steps=int(t.warmup_epochs * steps_per_epoch), optim=args.trainer_optim,
        max_grad_norm=0.0, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, dataloader_drop_last=True, disable_tqdm=True, remove_unused_columns=False,
        seed=cfg.seed)
    trainer = Trainer(model=_HFWrap(model, task), args=targs, train_dataset=_Indices(len(train)),
                      data_collator=_Collate(task, train, tf, torch.Generator().manual_seed(cfg.seed)),
                      callbacks=[Stamp()])
    trainer.train()
    del trainer
    return rates(stamps, args.warmup, args.steps, t.batch_size)


# -- driver ------------------------------------------------------------------------------------



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="registered model (default mobilenetv2; simple_cnn with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; 6 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, >= 1 (default 5; 2 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every contender")
    p.add_argument("--task", choices=sorted(RECIPES), default="classification",
                   help="classification (fashion-mnist-quick) or segmentation (scenes-seg: MobileNetV2 + FPN, 96 px)")
    p.add_argument("--image-size", type=int, default=None, help="default 32 (96 for segmentation)")
    p.add_argument("--trainer-optim", default="adamw_torch_fused",
                   help="the Trainer's optim (default adamw_torch_fused: the same fused AdamW as the other two)")
    p.add_argument("--no-ema", action="store_true",
                   help="leave out the EMA-on contenders (plain+ema, visionsmith+ema): the recipe trains with EMA on")
    p.add_argument("--quick", action="store_true", help="smoke run: simple_cnn, few steps")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default benchmarks/results/loop_overhead.json)")
    args = p.parse_args(argv)
    seg = args.task == "segmentation"
    defaults = dict(model="simple_cnn" if not seg else "mobilenetv2", batch_size=64 if not seg else 8, steps=6,
                    warmup=2, rounds=2, image_size=32 if not seg else 64) if args.quick else \
        dict(model="mobilenetv2", batch_size=128 if not seg else 32, steps=30 if not seg else 15, warmup=5 if not seg else 3,
             rounds=3, image_size=32 if not seg else 96)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        name = "loop_overhead" + ("-segmentation" if seg else "") + ("-quick" if args.quick else "") + ".json"
        args.out = ROOT / "benchmarks" / "results" / name
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup, --steps and --rounds must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    import visionsmith
    from visionsmith.tasks import get_task
    cfg, cfg_ema = make_config(args), make_config(args, ema=True)
    contenders = CONTENDERS[:3] if args.no_ema else CONTENDERS
    train = get_task(cfg).build_datasets(cfg.seed)["train"]
    if len(train) < (args.warmup + args.steps) * args.batch_size:
        sys.exit(f"{len(train)} training images are fewer than (warmup + steps) x batch; lower --steps")
    load_before = loadavg()
    print(f"loop_overhead: {args.task}, {args.model}, batch {args.batch_size}, {args.image_size}px, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds; load average {load_before}"
          + ("" if args.no_ema else f"; +ema rows: EMA on, decay {cfg_ema.train.ema_decay}"), flush=True)

    # One short untimed plain run first: process-wide first-use costs (oneDNN kernels, allocator
    # pools, lazy imports) would otherwise land on whichever contender runs first.
    plain_loop(cfg, train, argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 2}))

    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    threads_seen = set()
    with tempfile.TemporaryDirectory(prefix="vs-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for r in range(args.rounds):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            for name in order:
                torch.set_num_threads(args.threads)
                if name in ("plain", "plain+ema"):
                    res = plain_loop(cfg, train, args, ema=name == "plain+ema")
                elif name == "visionsmith":
                    res = visionsmith_loop(cfg, train, args, tmp, r)
                elif name == "visionsmith+ema":
                    res = visionsmith_loop(cfg_ema, train, args, tmp, f"ema-{r}")
                else:
                    res = trainer_loop(cfg, train, args, tmp, r)
                threads_seen.add(torch.get_num_threads())
                res["round"], res["load_avg"] = r, loadavg()
                runs[name].append(res)
                gc.collect()
                print(f"  round {r + 1}/{args.rounds} {name:<12} {res['img_per_s']:8.1f} img/s", flush=True)

    def summary(key: str) -> dict:
        med = {c: statistics.median(x[key] for x in runs[c]) for c in contenders}

        def per_round(a, b):
            return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b]))
        pairs = (("visionsmith", "plain"), ("visionsmith", "trainer"), ("trainer", "plain"))
        if not args.no_ema:
            pairs += (("visionsmith+ema", "plain+ema"), ("visionsmith+ema", "visionsmith"), ("plain+ema", "plain"))
        return {"median_img_per_s": med,
                "ratios": {f"{a}/{b}": med[a] / med[b] for a, b in pairs},
                "ratios_median_per_round": {f"{a}/{b}": per_round(a, b) for a, b in pairs}}

    window, step = summary("img_per_s"), summary("median_step_img_per_s")
    med_self = statistics.median(x["self_img_per_s"] for x in runs["visionsmith"])
    load_after = loadavg()

    for title, key, s in (("timed window (N steps, wall-clock)", "img_per_s", window),
                          ("median step (robust to load spikes)", "median_step_img_per_s", step)):
        med = s["median_img_per_s"]
        print(f"\n{title}")
        print(f"  {'contender':<20}{'median img/s':>14}{'vs plain':>10}   per round")
        for c in contenders:
            rr = " ".join(f"{x[key]:.1f}" for x in runs[c])
            print(f"  {c:<20}{med[c]:>14.1f}{med[c] / med['plain']:>9.3f}x   {rr}")
        if key == "img_per_s":
            for c in [c for c in contenders if c.startswith("visionsmith")]:
                ms = statistics.median(x["self_img_per_s"] for x in runs[c])
                rr = " ".join(f"{x['self_img_per_s']:.1f}" for x in runs[c])
                print(f"  {c + ' (self)':<20}{ms:>14.1f}{ms / med['plain']:>9.3f}x   {rr}"
                      "   (fit's own `time` column)")
        for k, v in s["ratios"].items():
            print(f"  {k:<20} {v:.3f}x ratio of medians   "
                  f"{s['ratios_median_per_round'][k]:.3f}x median of per-round ratios")
    target = window["ratios"]["visionsmith/plain"] >= 0.95
    print(f"\ntarget visionsmith >= 0.95x plain (timed window, ratio of medians): {'met' if target else 'NOT met'}")
    target_ema = None if args.no_ema else window["ratios"]["visionsmith+ema/plain+ema"] >= 0.95
    if target_ema is not None:
        print(f"with EMA on (the recipe as it is), visionsmith+ema >= 0.95x plain+ema: {'met' if target_ema else 'NOT met'}")
    print(f"load average: before {load_before}, after {load_after}")

    result = {
        "benchmark": "loop_overhead",
        "command": " ".join(["python benchmarks/loop_overhead.py", *(sys.argv[1:] if argv is None else argv)]),
        "what": "wall-clock images/s over N optimizer steps after W warm-up steps (data indexing, augmentation, "
                "forward, backward, optimizer step, loop bookkeeping); see the script's docstring",
        "settings": {"task": args.task, "model": args.model, "pretrained": cfg.model.pretrained, "batch_size": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
                     "image_size": args.image_size, "data": train.name, "train_images": len(train),
                     "channels_last": cfg.train.channels_last, "label_smoothing": cfg.train.label_smoothing,
                     "recipe": str(RECIPES[args.task].relative_to(ROOT)),
                     "log_every": cfg.train.log_every, "trainer_optim": args.trainer_optim, "quick": args.quick,
                     "contenders": list(contenders), "ema_decay": None if args.no_ema else cfg_ema.train.ema_decay},
        "timed_window": window,
        "median_step": step,
        "visionsmith_self_median_img_per_s": med_self,
        "visionsmith_ema_self_median_img_per_s": None if args.no_ema else
        statistics.median(x["self_img_per_s"] for x in runs["visionsmith+ema"]),
        "target_visionsmith_vs_plain_0.95": target,
        "target_visionsmith_ema_vs_plain_ema_0.95": target_ema,
        "runs": runs,
        "env": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "visionsmith": visionsmith.__version__, "python": platform.python_version(),
                "threads": sorted(threads_seen), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                "platform": platform.platform(), "load_avg_before": load_before, "load_avg_after": load_after},
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
