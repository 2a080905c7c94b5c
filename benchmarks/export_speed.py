"""Inference speed of one trained run: eager PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8 (vs pruned).

    python benchmarks/export_speed.py RUN                 # a Fashion-MNIST run folder (e.g. the quickstart's)
    python benchmarks/export_speed.py                     # trains recipes/fashion-mnist-quick first (~4 min)
    python benchmarks/export_speed.py RUN --pruned PRUNED # adds a pruned run (`visionsmith prune`) as a contender
    python benchmarks/export_speed.py --quick             # smoke run: simple_cnn, a short training, few iterations
    python benchmarks/export_speed.py SEG_RUN             # a segmentation run folder (the task is read from it)
    python benchmarks/export_speed.py --segmentation      # trains recipes/scenes-seg.yaml first (long: ~1 h)
    python benchmarks/export_speed.py --segmentation --quick  # smoke run: 64 px scenes, a few dozen steps

Contenders, all on the same [0, 1] test pixels, with the same thread count
(``torch.set_num_threads(T)`` and ORT ``intra_op_num_threads=T``, ``inter_op_num_threads=1``).
Each (round, contender) runs in a fresh worker process: ONNX Runtime's and PyTorch's thread pools
both busy-wait between ops, and in one process on two cores they starve each other (measured:
eager batch-1 latency 0.35 ms alone, 170 ms after an ORT session had run in the same process).

  * eager: the run's model (pixels in, normalisation inside) in ``torch.inference_mode()``, contiguous (NCHW) input;
  * eager_cl: the same in channels-last (what the run trains and evaluates with when
    ``train.channels_last``); the faster of the two eager layouts is the baseline;
  * ort_fp32: ``visionsmith export RUN`` (``RUN/export/model.onnx``), ONNX Runtime CPU;
  * ort_int8: ``visionsmith export RUN --int8`` (static QDQ, per-channel, u8s8, calibrated on
    256 training images; ``RUN/export/model.int8.onnx``);
  * pruned, pruned_cl (with ``--pruned RUN``): that run's weights, eager, both layouts.

ORT's thread spinning is left at its default (on); ``--no-spin`` turns it off for both ORT
contenders (better on a busy machine, see ``visionsmith.export.runtime.session_options``).

Both exports pass their parity check (fp32 max |dlogit| <= 1e-3; INT8 accuracy drop bound) before
being timed; their records stay in ``RUN/export/export.json``.

Timed, per contender and round: batch-1 latency over ``--latency-iters`` calls (one image per
call, cycling through the test images; p50 and p99 in ms) and batch-``--batch`` throughput over at
least ``--batches`` calls and ``--seconds`` seconds (images/s of the whole window, and of the
median call).  Each timed loop follows a few untimed calls.  Contenders run in ``--rounds``
interleaved rounds, rotated, so slow drift of the machine's load hits all alike; reported: medians
over rounds, and ratios to the eager baseline measured in the same run.  Accuracy: each contender
on the whole test split (``--eval-images`` to cap it), argmax of the logits.  Size: the ONNX file,
or the safetensors checkpoint for eager.  Target (issue 4): ort_int8 >= 2x eager throughput at
<= 0.5 points accuracy drop.
Writes ``benchmarks/results/export_speed.json`` (``export_speed-quick.json`` with --quick).

Segmentation (a run whose task is segmentation, or ``--segmentation``): the same contenders on the
run's test masks, the exports checked per pixel (fp32 argmax agreement >= 99.9%, INT8 mIoU drop
<= 0.5 points); quality is the task's headline metric (mIoU, from one confusion matrix over the
test split) instead of accuracy; throughput at batch ``--batch`` (default 8 for segmentation) and
batch-1 latency, both also given as images/s.  Without RUN it trains ``recipes/scenes-seg.yaml``
(MobileNetV2 + FPN on 96 px fashion-mnist scenes; ``--quick``: 64 px scenes, 192 training images,
2 epochs).  Writes ``export_speed-segmentation.json`` (``-segmentation-quick`` with --quick).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import cpu_model, loadavg, write_result  # noqa: E402  (benchmarks/common.py)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fashion-mnist-quick.yaml"
QUICK_OVERRIDES = ["model.name=simple_cnn", "model.pretrained=false", "model.in_chans=1", "data.image_size=28",
                   "train.epochs=1", "data.train_limit=6000", "train.ema=false"]
SEG_RECIPE = ROOT / "recipes" / "scenes-seg.yaml"
SEG_QUICK_OVERRIDES = ["data.name=coco", "data.image_size=64", "model.pretrained=true", "train.batch_size=16",
                       "train.epochs=2", "train.eval_batch_size=24", "seg.channels=32"]  # + data.root (64 px scenes)
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


# -- contenders ------------------------------------------------------------------------------------

class Eager:
    """The run's model (it takes [0, 1] pixels) in eager PyTorch; ``channels_last`` converts model and every
    input batch."""

    def __init__(self, run: Path, channels_last: bool):
        from visionsmith.engine.build import load_trained
        cfg, model, _, _ = load_trained(run)
        self.model = model.eval()
        self.cl = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        ck = run / "checkpoints"
        self.file = ck / "best.safetensors" if (ck / "best.safetensors").is_file() else ck / "last.safetensors"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if self.cl:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(t).numpy()


class Jit(Eager):
    """The same model traced, frozen and optimised for inference by TorchScript (``torch.jit.trace`` ->
    ``torch.jit.freeze`` -> ``torch.jit.optimize_for_inference``: folds BatchNorm into convolutions, fuses
    conv + ReLU, pre-packs weights for oneDNN): the strongest plain-PyTorch CPU option without a compiler
    toolchain, measured at 2.1x eager on the issue-12 machine."""

    def __init__(self, run: Path, channels_last: bool, size: int, in_chans: int):
        super().__init__(run, channels_last)
        example = torch.rand(8, in_chans, size, size)
        if channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        head = getattr(self.model, "head", None)
        if hasattr(head, "fixed_shapes"):  # Faster R-CNN: trace the fixed-shape path (the eager one's proposal
            head.fixed_shapes = True       # count and NMS are data-dependent: a trace would bake one image's in)
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(self.model, example, check_trace=False)
            self.model = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


class Compiled(Eager):
    """The same model through ``torch.compile`` (TorchInductor: generated C++/OpenMP kernels, BatchNorm
    folded, oneDNN convolutions; ``dynamic=False``, so batch 1 and the throughput batch each compile once,
    during the warm-up calls, which are not timed).  Needs a C++ compiler; left out with a note without one."""

    def __init__(self, run: Path, channels_last: bool):
        super().__init__(run, channels_last)
        with torch.no_grad():
            self.model = torch.compile(self.model, dynamic=False)


class Ort:
    """An exported file in an ONNX Runtime session with ``threads`` intra-op threads."""

    def __init__(self, path: Path, threads: int, spin: bool | None = None):
        from visionsmith.export import OnnxClassifier
        self.clf = OnnxClassifier(path, threads=threads, spin=spin)
        self.file = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict_pixels(x)


def latency_ms(fn, pixels: np.ndarray, iters: int, warmup: int = 10) -> list[float]:
    """Batch-1 call times (ms), one image per call, cycling through ``pixels``."""
    n = len(pixels)
    for i in range(warmup):
        fn(pixels[i % n:i % n + 1])
    out = []
    for i in range(iters):
        x = pixels[i % n:i % n + 1]
        t = time.perf_counter()
        fn(x)
        out.append(1000 * (time.perf_counter() - t))
    return out


def throughput(fn, pixels: np.ndarray, batch: int, batches: int, min_s: float, warmup: int = 3) -> dict:
    """images/s over at least ``batches`` calls of ``batch`` images and at least ``min_s`` seconds
    (a fast contender gets more calls, so every window is long enough to average out the scheduler)."""
    span = max(1, len(pixels) - batch + 1)
    for i in range(warmup):
        fn(pixels[(i * batch) % span:][:batch])
    dts = []
    t0 = time.perf_counter()
    i = 0
    while i < batches or time.perf_counter() - t0 < min_s:
        s = (i * batch) % span
        t = time.perf_counter()
        fn(pixels[s:s + batch])
        dts.append(time.perf_counter() - t)
        i += 1
    total = time.perf_counter() - t0
    return {"img_per_s": i * batch / total, "median_call_img_per_s": batch / statistics.median(dts), "calls": i}


def accuracy(fn, pixels: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    logits = np.concatenate([fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
    return float((logits.argmax(1) == labels).mean())


def headline(fn, pixels: np.ndarray, targets: list[dict], run: Path) -> float:
    """The run's task's headline metric (mIoU, mAP) of ``fn`` on the pixels and their targets, through
    the task's own metric accumulator, batch by batch (``targets``: one dict per batch of ``TARGET_BATCH``
    images, as ``task.make_batch`` gives them: masks, or per-image boxes and labels)."""
    from visionsmith.config import load_config
    from visionsmith.engine.runfolder import read_json
    from visionsmith.tasks import get_task
    task = get_task(load_config(run / "config.yaml"))
    metric = task.metric(read_json(run / "run.json")["classes"])
    for j, t in enumerate(targets):
        x = pixels[j * TARGET_BATCH:(j + 1) * TARGET_BATCH]
        metric.update(torch.from_numpy(np.asarray(fn(x))).float(), {"image": torch.from_numpy(x), **t})
    return float(metric.compute()[task.headline])


TARGET_BATCH = 32  # images per target dict (test_targets / headline)


def run_task(run: Path) -> tuple[str, str]:
    """(task name, its headline metric key) of a run folder."""
    from visionsmith.config import load_config
    from visionsmith.tasks import get_task
    task = get_task(load_config(run / "config.yaml"))
    return task.name, task.headline


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# -- setup -----------------------------------------------------------------------------------------

def get_run(args) -> Path:
    """The run folder to measure: the one given, or one trained here (reused when already finished)."""
    if args.run is not None:
        return Path(args.run)
    import visionsmith
    if args.segmentation:
        return seg_run(args)
    out = args.train_out or ROOT / "runs" / ("export-bench-quick" if args.quick else "export-bench-fashion-mnist")
    if (out / "checkpoints" / "best.safetensors").is_file():
        print(f"reusing the trained run {out}", flush=True)
        return out
    over = QUICK_OVERRIDES if args.quick else []
    print(f"no RUN given: training {RECIPE.name} {' '.join(over)} into {out}", flush=True)
    return visionsmith.train(RECIPE, overrides=over + [f"train.threads={args.threads}"], out=out, report=False)


def seg_run(args) -> Path:
    """The segmentation run to measure when none is given: recipes/scenes-seg.yaml (quick: 64 px scenes)."""
    import visionsmith
    out = args.train_out or ROOT / "runs" / ("export-bench-seg-quick" if args.quick else "export-bench-scenes-seg")
    if (out / "checkpoints" / "best.safetensors").is_file():
        print(f"reusing the trained run {out}", flush=True)
        return out
    over = []
    if args.quick:
        from visionsmith.data.scenes import ensure_scenes
        over = SEG_QUICK_OVERRIDES + [f"data.root={ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)}"]
    print(f"no RUN given: training {SEG_RECIPE.name} {' '.join(over)} into {out}", flush=True)
    return visionsmith.train(SEG_RECIPE, overrides=over + [f"train.threads={args.threads}"], out=out, report=False)


def test_targets(run: Path, limit: int | None) -> tuple[np.ndarray, list[dict], str]:
    """The run's test split (val if none) as [0, 1] pixels ``[N, C, S, S]`` and its task's targets, one
    dict per ``TARGET_BATCH`` images (masks ``[n, S, S]``, or per-image boxes and labels), through the task."""
    from visionsmith.config import load_config
    from visionsmith.engine.build import build_transforms, load_trained
    from visionsmith.export.inputs import pixel_transform
    from visionsmith.tasks import get_task
    cfg, model, _, _ = load_trained(run)
    _, tf = build_transforms(cfg, model)
    task = get_task(load_config(run / "config.yaml"))
    data = task.build_datasets(cfg.seed)
    ds = data["test"] if len(data.get("test", ())) else data["val"]
    n = len(ds) if limit is None else min(limit, len(ds))
    px, tg = [], []
    with torch.no_grad():
        for i in range(0, n, TARGET_BATCH):
            b = task.make_batch(ds, torch.arange(i, min(i + TARGET_BATCH, n)), pixel_transform(tf), None)
            px.append(b.pop("image"))
            tg.append(b)
    return np.ascontiguousarray(torch.cat(px).numpy()), tg, f"{n} images of {ds.name}"


def test_pixels(run: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The run's test split (val if none) as [0, 1] pixels ``[N, C, S, S]`` and labels ``[N]``."""
    from visionsmith.data import build_datasets
    from visionsmith.engine.build import build_transforms, load_trained
    from visionsmith.export.inputs import pixel_transform
    cfg, model, _, _ = load_trained(run)
    _, tf = build_transforms(cfg, model)
    data = build_datasets(cfg.data, cfg.seed)
    ds = data["test"] if len(data.get("test", ())) else data["val"]
    n = len(ds) if limit is None else min(limit, len(ds))
    with torch.no_grad():
        px = torch.cat([pixel_transform(tf)(ds.images[i:i + 1024], None) for i in range(0, n, 1024)])[:n]
    return np.ascontiguousarray(px.numpy()), ds.labels[:n].numpy(), f"{n} images of {ds.name}"


def cpu_info() -> dict:
    from visionsmith.export.quantize import cpu_flags
    flags = cpu_flags()
    return {"model": cpu_model(), "flags": {f: f in flags for f in FLAGS_OF_INTEREST}}



def cpu_pressure() -> str | None:
    """Linux PSI: the share of time runnable tasks waited for a CPU (a busy machine shows it)."""
    with contextlib.suppress(OSError):
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a Fashion-MNIST classification run folder (default: train one)")
    p.add_argument("--pruned", metavar="RUN", help="a pruned run folder (`visionsmith prune`) to time as well")
    p.add_argument("--threads", type=int, default=2, help="torch threads and ORT intra-op threads (default 2)")
    p.add_argument("--batch", type=int, default=None, help="throughput batch size (default 32; 8 for segmentation)")
    p.add_argument("--latency-iters", type=int, default=None, help="batch-1 calls per round (default 500; 30 quick)")
    p.add_argument("--batches", type=int, default=None,
                   help="throughput calls per round, at least (default 30; 5 quick)")
    p.add_argument("--seconds", type=float, default=None,
                   help="throughput window per round, at least (default 3; 0.3 quick)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 quick)")
    p.add_argument("--eval-images", type=int, default=None, help="test images for accuracy (default all; 1000 quick)")
    p.add_argument("--calib", type=int, default=256, help="INT8 calibration images (default 256)")
    p.add_argument("--max-drop", type=float, default=None,
                   help="headline points the INT8 export may lose (default: the task's bound); to time a model "
                        "that misses the bound, with its drop recorded")
    p.add_argument("--train-out", type=Path, help="where to train when no RUN is given")
    p.add_argument("--no-spin", action="store_true", help="ORT intra-op threads do not busy-wait (busy machines)")
    p.add_argument("--quick", action="store_true", help="smoke run: simple_cnn, short training, few iterations")
    p.add_argument("--segmentation", action="store_true",
                   help="without RUN: train and measure a segmentation run (recipes/scenes-seg.yaml)")
    p.add_argument("--out", type=Path, help="JSON result (default benchmarks/results/export_speed.json)")
    args = p.parse_args(argv)
    defaults = dict(latency_iters=30, batches=5, seconds=0.3, rounds=1, eval_images=1000) if args.quick else \
        dict(latency_iters=500, batches=30, seconds=3.0, rounds=3, eval_images=None)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        seg = "-segmentation" if args.segmentation else ""  # a RUN's task is known only later: see main
        args.out = ROOT / "benchmarks" / "results" / f"export_speed{seg}{'-quick' if args.quick else ''}.json"
        args.default_out = True
    if min(args.latency_iters, args.batches, args.rounds, args.threads, args.batch or 1) < 1:
        p.error("--latency-iters, --batches, --rounds, --threads and --batch must be >= 1")
    return args


# -- one measurement in a fresh process --------------------------------------------------------------

def worker(spec: dict) -> dict:
    """Load one contender, (optionally) score it, time it; ``spec`` comes from ``measure``."""
    torch.set_num_threads(spec["threads"])
    pixels = np.load(spec["pixels"])
    try:
        if spec["kind"] == "eager":
            fn = Eager(Path(spec["path"]), spec["channels_last"])
        elif spec["kind"] == "jit":
            fn = Jit(Path(spec["path"]), spec["channels_last"], pixels.shape[-1], pixels.shape[1])
        elif spec["kind"] == "compile":
            fn = Compiled(Path(spec["path"]), spec["channels_last"])
            fn(pixels[:1])  # compile now: a failure (no compiler) is this contender's error, not the timing's
        else:
            fn = Ort(Path(spec["path"]), spec["threads"], spin=False if spec["no_spin"] else None)
    except Exception as e:  # noqa: BLE001 - a contender that cannot be built is reported, the others still run
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    labels = torch.load(spec["labels"], weights_only=True) if spec["labels"].endswith(".pt") else np.load(spec["labels"])
    out = {"size_mb": fn.file.stat().st_size / 1e6, "threads_seen": torch.get_num_threads()}
    if spec["accuracy"]:
        if spec.get("task", "classification") == "classification":
            out["acc"] = accuracy(fn, pixels, labels)
        else:  # the task's headline metric (mIoU) from its own accumulator, on the dense targets
            out[spec["metric"]] = headline(fn, pixels, labels, Path(spec["run"]))
    lat = latency_ms(fn, pixels, spec["latency_iters"])
    out.update(p50_ms=statistics.median(lat), p99_ms=percentile(lat, 99),
               **throughput(fn, pixels, spec["batch"], spec["batches"], spec["seconds"]))
    return out


def measure(spec: dict) -> dict:
    """Run ``worker(spec)`` in a new interpreter (same environment, ``OMP_NUM_THREADS=threads``)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    res = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"worker for {spec['name']} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- driver ----------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(json.loads(argv[1]))))
        return {}
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    import visionsmith
    from visionsmith.export import export_onnx
    run = get_run(args)
    task, metric = run_task(run)
    seg = task != "classification"
    if args.batch is None:
        args.batch = 8 if seg else 32
    if seg and getattr(args, "default_out", False) and not args.segmentation:
        args.out = args.out.with_name(args.out.name.replace("export_speed", f"export_speed-{task}"))
    print(f"export_speed ({task}): {run}, {args.threads} threads; per round and contender batch 1 x {args.latency_iters}, "
          f"batch {args.batch} for >= {args.batches} calls and >= {args.seconds} s; {args.rounds} rounds; "
          f"load average {loadavg()}", flush=True)
    t0 = time.perf_counter()
    fp32 = export_onnx(run, threads=args.threads)
    int8 = export_onnx(run, int8="static", calib=args.calib, threads=args.threads,
                       **({"max_drop": args.max_drop} if args.max_drop is not None else {}))
    export_s = time.perf_counter() - t0
    print(f"exported and parity-checked in {export_s:.1f} s: {fp32.path.name}, {int8.path.name}", flush=True)

    contenders = {"eager": {"kind": "eager", "path": str(run), "channels_last": False},
                  "eager_cl": {"kind": "eager", "path": str(run), "channels_last": True},
                  "jit_frozen": {"kind": "jit", "path": str(run), "channels_last": True},
                  "compiled": {"kind": "compile", "path": str(run), "channels_last": True},
                  "ort_fp32": {"kind": "ort", "path": str(fp32.path)},
                  "ort_int8": {"kind": "ort", "path": str(int8.path)}}
    if args.pruned:
        contenders["pruned"] = {"kind": "eager", "path": str(Path(args.pruned)), "channels_last": False}
        contenders["pruned_cl"] = {"kind": "eager", "path": str(Path(args.pruned)), "channels_last": True}
    pixels, labels, source = (test_targets if seg else test_pixels)(run, args.eval_images)
    gc.collect()
    load_before = loadavg()
    names = list(contenders)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    acc, size, failed = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="vs-bench-export-") as tmp:
        np.save(Path(tmp) / "pixels.npy", pixels)
        lab_file = Path(tmp) / ("labels.pt" if seg else "labels.npy")  # task targets: a list of dicts
        torch.save(labels, lab_file) if seg else np.save(lab_file, labels)
        common = {"threads": args.threads, "pixels": str(Path(tmp) / "pixels.npy"),
                  "labels": str(lab_file), "latency_iters": args.latency_iters,
                  "batch": args.batch, "batches": args.batches, "seconds": args.seconds,
                  "no_spin": args.no_spin, "task": task, "metric": metric, "run": str(run)}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if name in failed:
                    continue
                res = measure({**common, **contenders[name], "name": name, "accuracy": r == 0})
                if "error" in res:
                    failed[name] = res["error"]
                    print(f"  {name} could not be built, left out: {res['error']}", flush=True)
                    continue
                if r == 0:
                    acc[name], size[name] = res.pop(metric), res["size_mb"]
                res.update(round=r, load_avg=loadavg())
                runs[name].append(res)
                print(f"  round {r + 1}/{args.rounds} {name:<10} b1 p50 {res['p50_ms']:7.3f} ms  "
                      f"b{args.batch} {res['img_per_s']:9.1f} img/s", flush=True)

    names = [n for n in names if n not in failed]
    med = {n: {k: statistics.median(x[k] for x in runs[n])
               for k in ("p50_ms", "p99_ms", "img_per_s", "median_call_img_per_s")} for n in names}
    base = max(("eager", "eager_cl"), key=lambda n: med[n]["img_per_s"])  # the faster eager layout
    best_pt = max((n for n in ("eager", "eager_cl", "jit_frozen", "compiled") if n in med),
                  key=lambda n: med[n]["img_per_s"])
    table = {}
    for n in names:
        table[n] = {**med[n], metric: acc[n], f"{metric}_drop_points": 100 * (acc[base] - acc[n]), "size_mb": size[n],
                    "throughput_vs_eager": med[n]["img_per_s"] / med[base]["img_per_s"],
                    "latency_p50_speedup_vs_eager": med[base]["p50_ms"] / med[n]["p50_ms"]}
        if seg:
            table[n]["b1_img_per_s"] = 1000 / med[n]["p50_ms"]
    i8 = table["ort_int8"]
    target = i8["throughput_vs_eager"] >= 2.0 and i8[f"{metric}_drop_points"] <= 0.5
    cpu = cpu_info()
    label = {"acc": "acc", "miou": "mIoU", "map": "mAP"}.get(metric, metric)

    print(f"\n{'accuracy' if metric == 'acc' else label} on {source}; medians over {args.rounds} round(s); baseline = {base} (the faster eager layout)")
    b1 = f"{'b1 img/s':>10}" if seg else ""
    print(f"  {'contender':<11}{label:>8}{'drop pts':>9}{'b1 p50 ms':>11}{'b1 p99 ms':>11}{b1}"
          f"{'b' + str(args.batch) + ' img/s':>12}{'vs eager':>10}{'size MB':>9}")
    for n in names:
        t = table[n]
        b1 = f"{t['b1_img_per_s']:>10.1f}" if seg else ""
        print(f"  {n:<11}{t[metric]:>8.4f}{t[f'{metric}_drop_points']:>9.2f}{t['p50_ms']:>11.3f}{t['p99_ms']:>11.3f}{b1}"
              f"{t['img_per_s']:>12.1f}{t['throughput_vs_eager']:>9.2f}x{t['size_mb']:>9.2f}")
    print(f"  ort_int8 / ort_fp32 throughput: {i8['img_per_s'] / table['ort_fp32']['img_per_s']:.2f}x; "
          f"ort_int8 / best PyTorch option ({best_pt}): {i8['img_per_s'] / table[best_pt]['img_per_s']:.2f}x")
    print(f"target ort_int8 >= 2x eager throughput at <= 0.5 points drop: {'met' if target else 'NOT met'} "
          f"({i8['throughput_vs_eager']:.2f}x, {i8[f'{metric}_drop_points']:+.2f} {label + ' ' if seg else ''}points)")
    vnni = cpu["flags"]["avx512_vnni"] or cpu["flags"]["avx_vnni"]
    kernels = ("VNNI (VPDPBUSD: u8 x s8 summed straight into int32)" if vnni else
               "AVX2 VPMADDUBSW (u8 x s8 pairs summed into saturating int16; exported with reduce_range)")
    print(f"CPU {cpu['model']}: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
          + f"; ONNX Runtime's INT8 GEMM path here: {kernels}")
    load_after = loadavg()
    print(f"load average: before {load_before}, after {load_after}; cpu pressure now: {cpu_pressure()}")

    result = {
        "benchmark": "export_speed",
        "command": " ".join(["python benchmarks/export_speed.py", *argv]),
        "what": "eager PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8 (static QDQ): batch-1 latency and "
                f"batch-N throughput, {'accuracy' if metric == 'acc' else label} and size; each measurement in a fresh process; see the docstring",
        "run": str(run), "task": task, "metric": metric, "pruned": args.pruned, "baseline": base, "best_pytorch": best_pt, "left_out": failed, "eval": source,
        "settings": {"threads": args.threads, "batch": args.batch, "latency_iters": args.latency_iters,
                     "batches": args.batches, "seconds": args.seconds, "rounds": args.rounds, "calib": args.calib,
                     "quick": args.quick, "ort_spinning": not args.no_spin},
        "table": table, "target_int8_2x_at_0.5_points": target,
        "exports": {"fp32": fp32.record, "int8": int8.record}, "export_s": round(export_s, 1), "runs": runs,
        "env": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "visionsmith": visionsmith.__version__, "python": platform.python_version(),
                "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                "load_avg_before": load_before, "load_avg_after": load_after, "cpu_pressure_after": cpu_pressure()},
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
