"""Export a run folder (classification or segmentation) to ONNX (fp32 or INT8), checked against PyTorch first.

    export_onnx("runs/fm")                       # -> runs/fm/export/model.onnx
    export_onnx("runs/fm", int8="static")        # -> runs/fm/export/model.int8.onnx

The graph is the run's model itself: [0, 1] pixels in, logits out (``[N, K]`` per image, or
``[N, K, S, S]`` per pixel for segmentation), normalisation inside (the model's ``pixel_norm``, whose
mean/std become constants of the graph; the contract is in
``visionsmith.export.runtime``).  What is compared, and the INT8 bound, come from the run's task
(``visionsmith.outputs``): top-1 and accuracy per image, or argmax agreement and mIoU per pixel.

Exporter: ``torch.onnx.export(dynamo=True)``, the ``torch.export``-based exporter, default since
torch 2.9; the TorchScript exporter it replaced is deprecated (it warns so in torch 2.13) and stops
at opset 20.  The dynamo exporter writes opset 18 graphs and converts them to the asked opset with
onnxscript's version converter, which covers 18..25; asked for anything else it silently keeps 18,
so the opset is checked before and after.

Nothing is left that looks done unless it passed: the model is written under a temporary name,
run in ONNX Runtime on held-out images, compared with PyTorch (``parity``), and only then renamed.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import decode_size
from ..errors import UserError
from .custom_ops import translation_table
from .parity import FP32_ATOL, ExportError
from .runtime import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, OnnxModel

DEFAULT_OPSET = 20   # torch's own default; ONNX Runtime >= 1.16 runs it
DEFAULT_CALIB = 256  # calibration images: MinMax ranges stop moving well before this on 10-class data
DEFAULT_CHECK = 1000  # held-out images: the INT8 accuracy drop is a paired difference, +-0.6 points at 1000


@dataclass
class ExportResult:
    path: Path      # the checked ONNX file
    record: dict    # what export.json holds for it: settings, parity, sizes, versions


def opset_range() -> tuple[int, int]:
    """(lowest, highest) ONNX opset this installation can write: the exporter's converter range,
    capped by what the installed ``onnx`` knows (``onnx.defs.onnx_opset_version()``)."""
    import onnx.defs
    try:  # onnxscript's version converter is what the dynamo exporter uses to reach the asked opset
        from onnxscript.version_converter._version_converter import (
            SUPPORTED_MAX_ONNX_OPSET as hi,
        )
        from onnxscript.version_converter._version_converter import (
            SUPPORTED_MIN_ONNX_OPSET as lo,
        )
    except ImportError:  # layout changed: the range torch 2.9-2.13 documents
        lo, hi = 18, 23
    return int(lo), int(min(hi, onnx.defs.onnx_opset_version()))


def check_opset(opset: int) -> int:
    lo, hi = opset_range()
    if not isinstance(opset, int) or not lo <= opset <= hi:
        import onnx
        raise ExportError(f"--opset {opset} cannot be written here: torch {torch.__version__}'s exporter with onnx "
                          f"{onnx.__version__} writes opsets {lo} to {hi} (default {DEFAULT_OPSET})")
    return opset


def default_path(run_dir: Path, int8: str | None) -> Path:
    return run_dir / "export" / ("model.int8.onnx" if int8 else "model.onnx")


def export_onnx(run_dir: str | Path, int8: str | None = None, opset: int = DEFAULT_OPSET,
                out: str | Path | None = None, calib: int = DEFAULT_CALIB, calib_data: str | Path | None = None,
                check: int = DEFAULT_CHECK, max_drop: float | None = None, atol: float = FP32_ATOL,
                threads: int | None = None, which: str = "best", extra_meta: dict | None = None,
                record: bool = True) -> ExportResult:
    """Export the run's ``which`` weights to ONNX; ``int8``: None (fp32), "static" or "dynamic".

    ``out``: the file (default ``RUN/export/model.onnx`` or ``model.int8.onnx``).  ``calib``:
    training images for static INT8 (or the images under ``calib_data``).  ``check``: held-out
    images (test split, else val) for parity.  ``max_drop``: points of the task's headline metric INT8
    may lose (None: the task's default, 1.0 accuracy points or 0.5 mIoU points).
    ``atol``: fp32 max |logit difference|.  Records the result in ``RUN/export/export.json`` (unless
    ``record`` is False: for a read-only run folder).  ``extra_meta``: more entries for the file's
    ``visionsmith`` metadata (the serving cache's key, ``visionsmith.export.cached``).
    Raises ``CheckpointError`` (no weights), ``ExportError``/``ParityError``/``ValueError``/``DataError``.
    """
    from ..engine.build import build_transforms, load_trained
    from ..methods import trains_head
    from ..outputs import output_for
    from ..tasks import get_task
    from .inputs import calibration_pixels, heldout_pixels
    from .quantize import INT8_MODES, quantize_int8

    run_dir = Path(run_dir)
    if int8 is not None and int8 not in INT8_MODES:
        raise UserError(f"--int8 must be one of {', '.join(INT8_MODES)}, got {int8!r}")
    check_opset(opset)
    if max_drop is not None and max_drop < 0:
        raise UserError(f"--max-drop must be >= 0 points (of accuracy, or mIoU for segmentation), got {max_drop}")
    if int8 == "static" and calib < 1:
        raise UserError(f"--calib must be >= 1 (images to calibrate INT8 activation ranges on), got {calib}")
    cfg, model, classes, info = load_trained(run_dir, which)
    if not trains_head(cfg):
        raise ExportError(f"{run_dir} is a self-supervised pretraining run (method={cfg.method}): its classifier "
                          "was never trained; fine-tune a classifier from it and export that run")
    task = get_task(cfg)
    output = output_for(task.name, classes, task.postprocess_settings())  # the graph's output, how parity is judged
    if not output.exportable:
        raise UserError(f"exporting a {task.name} run to ONNX is not supported yet; serve the run folder "
                        "(`visionsmith serve RUN`) or run it with its own command")
    if not getattr(model, "onnx_exportable", True):
        raise UserError(f"{run_dir}: a {type(model).__name__} does not export to ONNX yet; serve the run folder "
                        "(`visionsmith serve RUN` runs it with PyTorch) or use `visionsmith predict RUN`")
    max_drop = output.int8_max_drop if max_drop is None else max_drop
    if threads:
        torch.set_num_threads(threads)
    _, eval_tf = build_transforms(cfg, model)
    model.eval()  # takes [0, 1] pixels: it normalises them itself (pixel_norm)
    grayscale = info.get("data", {}).get("channels", 3) == 1  # how predict decodes files for this run
    out = Path(out) if out is not None else default_path(run_dir, int8)
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    held = heldout_pixels(cfg, eval_tf, check)
    cache: dict = {}  # what the task's comparison keeps between the fp32 and the INT8 check
    meta = {"classes": list(classes), "image_size": eval_tf.image_size, "in_chans": eval_tf.in_chans,
            "task": task.name, "output": output.onnx_output, "run": str(run_dir), "int8": bool(int8),
            "opset": opset, "preprocess": {"decode_size": decode_size(cfg.data),
                                           "grayscale": grayscale},
            "weights": which, "free_size": output.free_size, **output.describe(), **(extra_meta or {})}
    tmp_fp32 = out.with_name(f".{out.stem}.fp32-{os.getpid()}.tmp.onnx")
    tmp_int8 = out.with_name(f".{out.stem}.int8-{os.getpid()}.tmp.onnx")
    try:
        _torch_export(model, eval_tf, opset, tmp_fp32, run_dir, cfg, output.free_size)
        set_metadata(tmp_fp32, {**meta, "int8": False})
        parity = {"images": held.source}
        parity["fp32"] = output.compare(model, OnnxModel(tmp_fp32, threads), held, atol, task, cache)
        output.check_fp32(parity["fp32"], atol)
        quant = None
        final = tmp_fp32
        if int8:
            cal = calibration_pixels(cfg, eval_tf, calib, calib_data, grayscale) if int8 == "static" else None
            scopes = [name for name, m in model.named_modules() if getattr(m, "int8_own_ops_float", False)]
            quant = quantize_int8(tmp_fp32, tmp_int8, int8, None if cal is None else cal.pixels.numpy(), INPUT_NAME,
                                  float_scopes=scopes)
            if cal is not None:
                quant["calib_source"] = cal.source
            set_metadata(tmp_int8, {**meta, "quantization": quant})
            parity["int8"] = output.compare(model, OnnxModel(tmp_int8, threads), held, atol, task, cache)
            output.check_int8(parity["int8"], max_drop, int8)
            final = tmp_int8
        os.replace(final, out)  # the only step that makes the file look done
    finally:
        for p in (tmp_fp32, tmp_int8):
            p.unlink(missing_ok=True)
    rec = _record(out, run_dir, meta, quant, parity, output.bounds(atol, max_drop), time.perf_counter() - t0)
    if record:
        _update_export_json(run_dir, out, rec)
    return ExportResult(out, rec)


def _torch_export(model, eval_tf, opset: int, path: Path, run_dir: Path, cfg, free_size: bool = False) -> None:
    """``torch.onnx.export(dynamo=True)`` of ``model`` (pixels in) into ``path`` (weights inside the file);
    ``free_size``: height and width stay free dimensions too (fully convolutional image-to-image models)."""
    import onnx

    from ..surgery.transfer import PEFT_MODES
    s = eval_tf.image_size
    example = torch.rand(2, eval_tf.in_chans, s, s)  # batch 2: a batch of 1 may be specialised as a constant
    batch = torch.export.Dim("batch", min=1)
    dims = {0: batch}
    if free_size:
        dims.update({2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)})
    quiet = io.StringIO()
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # "torchvision is not installed, skipping nms" and such: not our business
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
            program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=(dims,),
                                        opset_version=opset, dynamo=True, verbose=False, optimize=True,
                                        custom_translation_table=translation_table())
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        hint = (f" A {cfg.adapt.mode} run: fold its adapters first (`visionsmith merge {run_dir}`) and export "
                "the merged run." if cfg.adapt.mode in PEFT_MODES else "")
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"torch.onnx.export could not export {cfg.model.name} from {run_dir}: "
                          f"{type(e).__name__}: {first}.{hint}") from e
    finally:
        log.setLevel(level)
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:  # the converter falls back to opset 18 with only a log line when it cannot convert
        raise ExportError(f"the exporter could not convert {cfg.model.name} to opset {opset} (it produced opset "
                          f"{got}); use --opset {got}")
    onnx.save_model(proto, str(path))


def set_metadata(path: Path, meta: dict) -> None:
    """Write ``meta`` as JSON under ``metadata_props["visionsmith"]`` of the ONNX file at ``path``
    (which must pass ``onnx.checker``)."""
    import onnx
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)  # a file other runtimes can read, not only the ORT we check with
    onnx.save_model(model, str(path))


def _record(out: Path, run_dir: Path, meta: dict, quant: dict | None, parity: dict, bounds: dict,
            secs: float) -> dict:
    import onnx
    import onnxruntime

    from .. import __version__
    from .quantize import cpu_flags, has_vnni
    try:
        import onnxscript
        osv = onnxscript.__version__
    except ImportError:
        osv = None
    flags = cpu_flags()
    return {"file": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "opset": meta["opset"],
            "task": meta["task"], "output": meta["output"],
            "int8": meta["int8"], "quantization": quant, "size_bytes": out.stat().st_size,
            "exporter": "torch.onnx.export(dynamo=True)", "weights": meta["weights"],
            "parity": parity, "bounds": bounds,
            "export_s": round(secs, 2),
            "env": {"visionsmith": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__, "onnxscript": osv, "vnni": has_vnni(flags),
                    "avx2": "avx2" in flags, "avx512f": "avx512f" in flags}}


def _update_export_json(run_dir: Path, out: Path, record: dict) -> None:
    """``RUN/export/export.json``: ``{"exports": {file: record}}``, one entry per exported file
    (path relative to the run folder when inside it), so fp32 and INT8 exports sit side by side."""
    from ..engine.runfolder import read_json, write_json
    path = run_dir / "export" / "export.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_json(path)
    try:
        key = str(out.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        key = str(out.resolve())
    data.setdefault("exports", {})[key] = record
    write_json(path, data)
