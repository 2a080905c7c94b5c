"""The Python API; the CLI only wraps these functions.

    import visionsmith
    run = visionsmith.train("recipes/digits.yaml", overrides=["train.epochs=2"])
    visionsmith.evaluate(run)
    visionsmith.predict(run, ["shoe.png"])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import RECIPES, Config, find_recipe, load_config  # noqa: F401  (re-exported)
from .engine import distributed as D
from .engine.evaluate import evaluate_run
from .engine.loop import fit
from .engine.runfolder import read_json, write_json
from .errors import UserError
from .methods import trains_head
from .outputs import MaskPrediction, Prediction  # noqa: F401  (re-exported: what predict returns)
from .surgery.transfer import PEFT_MODES


def _as_config(config: Config | str | Path | None, overrides) -> Config:
    if isinstance(config, Config):
        from .config import apply_overrides, from_dict, to_dict
        return from_dict(apply_overrides(to_dict(config), list(overrides))) if overrides else config
    return load_config(find_recipe(config) if config is not None else None, list(overrides))


def finish(run_dir: Path) -> dict:
    """After training: test evaluation, published comparison, report and model card (rank 0)."""
    from .report import published_fashion_mnist, write_model_card, write_report
    info = read_json(run_dir / "run.json")
    cfg = load_config(run_dir / "config.yaml")
    # A self-supervised run's head was never trained: evaluate_run scores it by kNN on frozen features.
    metrics = evaluate_run(run_dir, "test") if info.get("data", {}).get("test") else {}
    if cfg.adapt.mode in PEFT_MODES and info.get("status") != "interrupted":
        from .engine.adapters import save_adapter
        save_adapter(run_dir)
    if info.get("data", {}).get("name") == "fashion_mnist" and trains_head(cfg):
        write_json(run_dir / "published.json", {"rows": published_fashion_mnist()})
    write_report(run_dir)
    write_model_card(run_dir)
    return metrics


def train(config: Config | str | Path | None = None, overrides=(), out: str | Path | None = None,
          report: bool = True) -> Path:
    """Train from a Config, a YAML path or a recipe name; returns the run folder."""
    cfg = _as_config(config, overrides)
    run_dir = fit(cfg, out=out)
    return _after(run_dir, report)


def resume(run_dir: str | Path, report: bool = True) -> Path:
    """Continue a run from its last committed checkpoint, bit for bit on CPU."""
    from .engine.checkpoint import CheckpointError
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml)")
    fit(load_config(run_dir / "config.yaml"), resume=run_dir)
    return _after(run_dir, report)


def _after(run_dir: Path, report: bool) -> Path:
    d = D.current()
    if report and d.main:
        finish(run_dir)
    D.barrier(d)
    D.shutdown(d)
    return run_dir


def evaluate(run_dir: str | Path, split: str = "test", which: str = "best") -> dict:
    """Metrics of a run's weights on a split (writes eval.json for the test split)."""
    return evaluate_run(Path(run_dir), split, which)


@dataclass
class PredictResult:
    """``predictions``: one per good file, in input order (``Prediction``: top-k classes, or
    ``MaskPrediction``: a segmentation mask's summary and its files); ``bad``: (path, reason) per file
    that could not be read; ``task``; ``out``: the folder the files went to (segmentation)."""
    predictions: list = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    task: str = "classification"
    out: Path | None = None


@dataclass
class _Runner:
    """A trained model behind one call, for predict: uint8 images ``[N, C, s, s]`` (the decode size)
    -> float logits (``[N, K]`` or ``[N, K, S, S]``), plus how files are decoded for it."""
    source: str
    task: str
    classes: list[str]
    decode_size: int
    grayscale: bool
    max_pixels: int
    run: object  # callable: uint8 [N, C, s, s] -> torch float tensor
    settings: dict = field(default_factory=dict)  # Task.postprocess_settings() of the run


def _torch_runner(run_dir) -> _Runner:
    from .data import decode_size
    from .engine.build import build_transforms, load_trained
    from .tasks import get_task
    cfg, model, classes, info = load_trained(run_dir)
    if not trains_head(cfg):
        raise UserError(f"{run_dir} is a self-supervised pretraining run (method={cfg.method}): its classifier was "
                         "never trained; train one from it first (method=supervised adapt.mode=linear or full, "
                         f"model.pretrained={run_dir}) and predict with that run")
    _, eval_tf = build_transforms(cfg, model)
    task = get_task(cfg)
    # The memory layout `eval` uses (channels-last for the CNN recipes): the same layout gives the
    # same kernels, so a PNG of a test image gets exactly the probabilities `eval` computes.
    layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    return _Runner(str(run_dir), task.name, list(classes), decode_size(cfg.data),
                   info.get("data", {}).get("channels", 3) == 1, cfg.data.max_pixels,
                   lambda u8: model(eval_tf(u8, None).contiguous(memory_format=layout)), task.postprocess_settings())


def _onnx_runner(path: Path) -> _Runner:
    """An exported ONNX file: same decoding and resize as the run, ONNX Runtime."""
    import numpy as np

    from .data import DEFAULT_MAX_PIXELS
    from .export import OnnxModel
    clf = OnnxModel(path)  # FileNotFoundError / ValueError for a missing or foreign file
    return _Runner(str(path), clf.task, clf.classes, clf.decode_size, clf.grayscale, DEFAULT_MAX_PIXELS,
                   lambda u8: torch.from_numpy(np.asarray(clf.predict_pixels(clf.preprocess(u8)))), clf.settings)


PREDICT_MAX_HELD_PIXELS = 64 * 2**20  # decoded images kept for overlays at once (~200 MB of RGB)


@torch.no_grad()
def predict(run_dir: str | Path, inputs, topk: int = 5, batch_size: int = 64,
            out: str | Path | None = None) -> PredictResult:
    """Predictions for each image file (folders are searched recursively), by the run's task.

    ``run_dir``: a run folder or an ONNX file from ``visionsmith export``.  Classification: the
    top-k classes of each image (``Prediction``).  Segmentation: ``out`` is required; each image
    gets ``out/NAME.mask.png`` (palette PNG of class indices, the input's size), ``NAME.overlay.png``
    (class colours over the image, with a legend) and ``NAME.json`` (per-class pixel fractions, mean
    confidence), ``out/predictions.json`` lists them all (``MaskPrediction``).

    Every good file gets an answer; bad ones (unreadable, not an image, too many pixels) are
    listed in ``.bad`` with the reason, never raised.
    """
    from .data import DataError, load_image
    from .data.images import printable_path
    from .outputs import output_for

    runner = _onnx_runner(Path(run_dir)) if str(run_dir).lower().endswith(".onnx") else _torch_runner(run_dir)
    output = output_for(runner.task, runner.classes, runner.settings)
    writer = output.writer(out, runner.source)  # segmentation: refuses a missing --out before any work
    res = PredictResult(task=runner.task, out=writer.out)
    pending: list[tuple[Path, torch.Tensor, object, object]] = []  # (file, windows, ctx, image or None)

    def flush():
        if not pending:
            return
        windows = torch.cat([w for _, w, _, _ in pending])
        logits = torch.cat([runner.run(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)])
        at = 0
        for f, w, ctx, img in pending:
            pred, extra = output.predict(printable_path(f), logits[at:at + len(w)], ctx, topk=topk)
            at += len(w)
            writer.write(pred, img, extra)  # segmentation: the mask, overlay and JSON files
            res.predictions.append(pred)
        pending.clear()

    held_windows = held_pixels = 0
    from .data.folder import list_image_inputs
    files, odd = list_image_inputs(inputs)
    res.bad += [(printable_path(q), why) for q, why in odd]
    for f in files:
        if not f.exists():
            res.bad.append((printable_path(f), "no such file"))
            continue
        try:
            img = load_image(f, grayscale=runner.grayscale, max_pixels=runner.max_pixels)
            windows, ctx = output.prepare(img, runner.decode_size, runner.grayscale)
        except DataError as e:
            res.bad.append((printable_path(f), getattr(e, "reason", str(e))))
            continue
        pending.append((f, windows, ctx, img if output.keeps_image else None))
        held_windows += len(windows)
        held_pixels += img.width * img.height if output.keeps_image else 0
        if held_windows >= batch_size or held_pixels >= PREDICT_MAX_HELD_PIXELS:
            flush()
            held_windows = held_pixels = 0
    flush()
    writer.finish(res)
    return res


def enhance(run_dir: str | Path, inputs, out: str | Path, tile: int | None = None):
    """Restore image files with an enhancement run (denoise, upscale); writes ``out/<name>.png`` and
    ``out/enhanced.json``.  Returns ``workflows.enhance.EnhanceResult``."""
    from .workflows.enhance import enhance as run
    return run(run_dir, inputs, out, tile)


def sample(run_dir: str | Path, n: int = 64, klass: int | None = None, steps: int | None = None,
           guidance: float | None = None, seed: int = 0, out: str | Path = "samples", sampler: str | None = None):
    """Draw ``n`` images from a generation run into ``out`` (``workflows/sample.py``)."""
    from .workflows.sample import sample as _sample
    return _sample(run_dir, n, klass, steps, guidance, seed, out, sampler)


def export(run_dir: str | Path, format: str = "onnx", int8: str | None = None, opset: int | None = None,
           out: str | Path | None = None, calib: int | None = None, calib_data: str | Path | None = None,
           check: int | None = None, max_drop: float | None = None):
    """Export a run's best weights to ONNX (``int8``: None, "static" or "dynamic"), parity-checked
    against PyTorch on held-out images before the file is written; -> ``ExportResult`` (.path, .record)."""
    from .export import export_onnx
    from .export.onnx import DEFAULT_CALIB, DEFAULT_CHECK, DEFAULT_OPSET
    if format != "onnx":
        raise UserError(f"export format {format!r} is not supported; use onnx")
    return export_onnx(run_dir, int8=int8, opset=DEFAULT_OPSET if opset is None else opset, out=out,
                       calib=DEFAULT_CALIB if calib is None else calib, calib_data=calib_data,
                       check=DEFAULT_CHECK if check is None else check,
                       max_drop=max_drop)  # None: the task's bound (1.0 accuracy points, 0.5 mIoU points)


def report(run_dir: str | Path) -> Path:
    """(Re)write report.html and model_card.md of a run folder, even a half-written one."""
    from .report import write_model_card, write_report
    run_dir = Path(run_dir)
    write_model_card(run_dir)
    return write_report(run_dir)


def quickstart(out: str | Path | None = None, overrides=()) -> tuple[Path, dict]:
    """Fine-tune the embedded ImageNet MobileNetV2 on Fashion-MNIST (recipe fashion-mnist-quick)."""
    run_dir = train("fashion-mnist-quick", overrides, out=out)
    return run_dir, read_json(run_dir / "eval.json")


def fewshot(run_or_model: str | Path, ways: int = 5, shots=(1, 5), episodes: int = 200, queries: int = 15,
            data: str | Path | None = None, split: str | None = None, image_size: int | None = None,
            seed: int = 0, pretrained: bool = True, batch_size: int = 256, out: str | Path | None = None) -> dict:
    """N-way K-shot prototype accuracy (mean and 95% interval per K) on frozen features.

    ``run_or_model``: a run folder (its weights; its own test split unless ``data`` is given) or
    a registered model name (its embedded pretrained weights, ``pretrained=False`` for random
    init) on ``data`` (dataset name, recipe YAML, CSV or folder; default fashion_mnist).
    Bad arguments (more shots than a class has, more ways than classes) raise ``ValueError``
    before any feature is computed.  ``out``: also write the result as JSON there.
    """
    import time

    from .workflows.fewshot import (
        check_class_counts,
        check_episode_args,
        extract_features,
        fewshot_eval,
        resolve_source,
    )
    shots = check_episode_args(ways, shots, episodes, queries)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src = resolve_source(run_or_model, data, split, image_size, pretrained, device,
                         check=lambda ds: check_class_counts(ds.labels, ds.classes, ways, shots, queries))
    t0 = time.perf_counter()
    feats = extract_features(src.model, src.dataset.images, src.eval_tf, batch_size, device)
    secs = time.perf_counter() - t0
    res = fewshot_eval(feats, src.dataset.labels, ways, shots, episodes, queries, seed, src.dataset.classes)
    res = {**src.info, "feature_dim": int(feats.shape[1]), "features_s": round(secs, 2), **res}
    if out:
        write_json(Path(out), res)
    return res


def zeroshot(clip_folder: str | Path, data: str | Path | None = None, split: str | None = None,
             prompts=None, batch_size: int = 128, out: str | Path | None = None) -> dict:
    """Zero-shot accuracy of a local CLIP model folder (``save_pretrained`` + tokenizer) on
    ``data`` (as in ``fewshot``; default fashion_mnist test), classes named by their folder or
    dataset class names in ``prompts`` (default ``["a photo of a {}."]``)."""
    from .workflows.fewshot import data_config, load_split
    from .workflows.zeroshot import (
        DEFAULT_PROMPTS,
        check_prompts,
        clip_config,
        zeroshot_eval,
    )
    prompts = check_prompts(prompts or DEFAULT_PROMPTS)
    config = clip_config(clip_folder)  # a bad folder fails before any data is read
    dcfg = data_config(data, config.vision_config.image_size)  # folders decode straight to CLIP's size
    ds = load_split(dcfg, split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = zeroshot_eval(clip_folder, ds.images, ds.labels, ds.classes, prompts, batch_size, device)
    res = {"model": str(clip_folder), "data": dcfg.name if dcfg.name in ("fashion_mnist", "digits") else
           str(dcfg.root or dcfg.csv), "split": ds.name.rsplit("/", 1)[-1], **res}
    if out:
        write_json(Path(out), res)
    return res


def merge(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """Fold a peft run's adapters into its base weights: a plain run folder; -> (folder, max logit diff)."""
    from .engine.adapters import merge_run
    return merge_run(run_dir, out)


def prune(run_dir: str | Path, amount: float = 0.5, kind: str = "structured", finetune_epochs: int = 1,
          out: str | Path | None = None, sweep=None, importance: str = "l2", scope: str = "layer",
          overrides=(), command: str = "") -> tuple[Path, list[dict]]:
    """Prune a trained run (``kind``: structured channels or unstructured weights, ``amount`` in [0, 1)),
    fine-tune ``finetune_epochs`` with its recipe (``overrides`` such as ``train.lr=3e-4`` on top) and
    write a new run folder with report; -> (folder, [unpruned row, pruned row]).

    ``sweep=[0.25, 0.5, 0.75]``: one pruned run per amount under ``out`` (default
    ``<run>-prune-sweep-<kind>``) plus ``sweep.json/.md/.png/.html``; -> (sweep folder, rows)."""
    from .workflows.prune import prune_run, prune_sweep
    if sweep is None:
        run, row = prune_run(run_dir, amount, kind, finetune_epochs, out, importance, scope, overrides, finish)
        report(run)  # again: prune.json (the report's pruning section) is written after the first report
        return run, [read_json(run / "prune.json")["baseline"], row]
    from .report.prune import write_sweep
    folder, rows = prune_sweep(run_dir, sweep, kind, finetune_epochs, out, importance, scope, overrides, finish)
    for row in rows[1:]:
        report(row["run"])  # with the pruning section, now that prune.json holds the side-by-side speeds
    write_sweep(folder, read_json(folder / "sweep.json"), command or f"visionsmith prune {run_dir} --{kind} "
                f"--sweep {','.join(f'{a:g}' for a in sweep)} --finetune-epochs {finetune_epochs}")
    return folder, rows


def robustness(run_dir: str | Path, eps="0,1/255,2/255,4/255,8/255", attack: str = "pgd", norm: str = "linf",
               steps: int = 20, step_size: float | None = None, images: int = 1000, split: str = "test",
               which: str = "best") -> dict:
    """Clean and robust accuracy of a run against ``attack`` at every eps ([0, 1] pixel units).

    Adds the curve to ``RUN/robustness.json``, draws every curve into ``RUN/robustness.png`` and
    rewrites the report; -> the curve ({attack, norm, steps, images, points: [{eps, acc}]})."""
    import base64

    from .report.robustness import read_curves, robustness_plot
    from .workflows.robustness import robustness_run
    curve = robustness_run(run_dir, eps, attack, norm, steps, step_size, images, split, which)
    png = robustness_plot(read_curves(Path(run_dir)))
    if png:
        (Path(run_dir) / "robustness.png").write_bytes(base64.b64decode(png))
    report(run_dir)
    return curve


def compare(spec: str | Path, out: str | Path | None = None, only: list[str] | None = None) -> tuple[Path, list[dict]]:
    """Train every run of a comparison spec (reusing finished ones); -> (folder, table rows)."""
    from .workflows.compare import run_comparison
    return run_comparison(spec, out, only)
