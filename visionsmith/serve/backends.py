"""What the server runs: a model behind a four-attribute interface, from a run folder or an ONNX file.

    backend = load_backend("runs/digits")                 # the run's best weights, on ONNX Runtime (exported once)
    backend = load_backend("runs/digits", backend="pytorch")  # the same weights in eager PyTorch
    backend = load_backend("runs/digits/export/model.onnx")  # an exported file, on ONNX Runtime
    pixels = backend.decode(png_bytes)                    # float32 [C, S, S] in [0, 1] (BadImageError)
    logits = backend.run(torch.stack([pixels, ...]))      # numpy float32 [N, K] (or [N, K, S, S])
    pixels, ctx = backend.prepare(png_bytes)              # the task's windows [n, C, S, S] of one upload
    answer = backend.output.answer(logits_of_them, ctx, "x.png", k)  # its part of the JSON response

What an upload becomes and what the answer holds is the run's task's (``visionsmith.outputs``):
one centre-cropped window and top-k classes for classification; windows covering the whole image
and a class mask (PNG) with per-class pixel fractions for segmentation.

Both backends take the same input: [0, 1] pixels at the model's side, normalisation inside the
model (its ``pixel_norm`` for a checkpoint, inside the graph for ONNX), so the batcher, the page and
the tests never care which one they talk to.  Decoding follows ``visionsmith.api.predict`` step for
step (same ``load_image`` checks, same ``image_to_uint8`` resize rule, same channel handling), so the
server answers exactly what ``visionsmith predict`` answers for the same file.

A run folder is served on ONNX Runtime by default (``backend="auto"``): its best weights are exported
once with ``visionsmith.export.cached_onnx`` (the export's own parity check against PyTorch), cached
as ``RUN/export/serve.onnx`` and reused until the weights, the config or the exporter change.  Eager
PyTorch pays a few milliseconds of Python per call that ONNX Runtime does not (``docs/serving.md``).
When the export is impossible (no onnx/onnxruntime, a model the exporter cannot take, a failed parity
check, no held-out images to check on), "auto" serves the checkpoint in PyTorch and says why in one
line; ``backend="onnx"`` makes that an error, ``backend="pytorch"`` never exports.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import DEFAULT_MAX_PIXELS, BatchTransform, decode_size, image_to_uint8
from ..data.images import load_image_bytes
from ..errors import UserError


class Backend:
    """A model the server can run.

    Attributes: ``name`` (URL-safe), ``kind`` ("pytorch" or "onnx"), ``source`` (the path),
    ``task`` ("classification", "segmentation"), ``output`` (the task's outputs: what an upload
    becomes and what the answer holds, ``visionsmith.outputs``), ``classes``, ``image_size`` (S),
    ``in_chans`` (C), ``grayscale`` (uploads are decoded to one channel first, as the training data was),
    ``decode_size`` (side ``image_to_uint8`` decodes to before the final resize, as in training),
    ``max_batch`` (None: any batch size), ``max_pixels`` (per upload, checked from the header before
    decoding; the run's own ``data.max_pixels``, which ``create_app`` lowers to the server's limit).
    Subclasses implement ``run``.
    """

    kind = "?"
    max_batch: int | None = None
    batched = True  # uploads become fixed-size windows the batcher stacks across requests (ImageBackend: no)
    note: str | None = None  # how the backend was chosen, when that needs saying (``GET /v1/models``: backend_note)
    run_dir: str | None = None  # the run folder a cached ONNX graph was made from

    def __init__(self, name: str, source: str, classes: list[str], image_size: int, in_chans: int,
                 grayscale: bool, decode_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 task: str = "classification", settings: dict | None = None):
        from ..outputs import output_for
        self.name, self.source, self.classes = name, source, list(classes)
        self.task = task
        self.output = output_for(task, self.classes, settings)
        self.image_size, self.in_chans, self.grayscale = int(image_size), int(in_chans), bool(grayscale)
        self.decode_size = int(decode_size or image_size)
        self.max_pixels = int(max_pixels)
        # BatchTransform's eval resize and channel matching to [0, 1] pixels; the normalisation
        # lives inside the model.
        self._to_pixels = BatchTransform(False, self.image_size, self.in_chans)

    def decode(self, data: bytes, name: str = "upload") -> torch.Tensor:
        """Image bytes -> float32 ``[C, S, S]`` in [0, 1]; raises ``BadImageError`` naming ``name``."""
        img = load_image_bytes(data, name, grayscale=self.grayscale, max_pixels=self.max_pixels)
        u8 = image_to_uint8(img, self.decode_size, self.grayscale)  # uint8 [c, s, s]
        return self._to_pixels(u8.unsqueeze(0))[0]

    def prepare(self, data: bytes, name: str = "upload"):
        """Image bytes -> (float32 ``[n, C, S, S]`` in [0, 1]: the task's windows of it, the context
        its answer needs); raises ``BadImageError`` naming ``name``.  Classification: ``decode``'s
        one window; segmentation: windows covering the whole image (``visionsmith.outputs.tile``)."""
        img = load_image_bytes(data, name, grayscale=self.grayscale, max_pixels=self.max_pixels)
        u8, ctx = self.output.prepare(img, self.decode_size, self.grayscale)
        return self._to_pixels(u8), ctx

    def run(self, pixels: torch.Tensor) -> np.ndarray:  # pragma: no cover - interface
        """float32 ``[N, C, S, S]`` in [0, 1] -> float32 logits ``[N, K]`` or ``[N, K, S, S]`` (numpy)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What ``GET /v1/models`` says about this model."""
        return {"name": self.name, "kind": self.kind, "task": self.task, "source": self.source,
                "classes": self.classes, "image_size": self.image_size, "in_chans": self.in_chans,
                "grayscale": self.grayscale, "max_batch": self.max_batch, **self.output.describe(),
                **({"run": self.run_dir} if self.run_dir else {}), **({"backend_note": self.note} if self.note else {})}


def is_small_image(data: bytes, max_pixels: int) -> bool:
    """True when the header says at most ``max_pixels`` (only the header is read), or when the bytes
    are no image Pillow knows (decoding then fails at once, so it is cheap too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Exception:  # noqa: BLE001 - not an image, a bomb, a broken header: all fail fast in decode
        return True
    return w * h <= max_pixels


class TorchBackend(Backend):
    """A run folder's best weights (``load_trained``), in eval mode: the model takes [0, 1] pixels."""

    kind = "pytorch"

    def __init__(self, run_dir: str | Path, name: str):
        from ..engine.build import load_trained
        from ..methods import trains_head
        from ..tasks import get_task
        cfg, model, classes, info = load_trained(run_dir)
        if not trains_head(cfg):
            raise UserError(f"{run_dir} is a self-supervised pretraining run (method={cfg.method}): its classifier "
                             "was never trained, so there is nothing to serve; fine-tune a classifier from it first")
        super().__init__(name, str(run_dir), classes, cfg.data.image_size, cfg.model.in_chans,
                         grayscale=info.get("data", {}).get("channels", 3) == 1,
                         decode_size=decode_size(cfg.data),
                         max_pixels=cfg.data.max_pixels, task=get_task(cfg).name,
                         settings=get_task(cfg).postprocess_settings())
        self.model = model.eval()
        # Runs that train channels-last (the CNN recipes) also infer faster that way on CPU
        # (MobileNetV2 at 32 px, 1 thread: about 25% less time per batch of 1 to 8).
        self.channels_last = bool(cfg.train.channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(self, pixels: torch.Tensor) -> np.ndarray:
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.model(pixels).float().numpy()


class ImageBackend(TorchBackend):
    """An enhancement run: an upload is restored whole (tile by tile, ``EnhancementTask.run_image``, exactly
    as ``visionsmith enhance`` restores the same file), one upload at a time on the inference thread, not
    batched with others (the images differ in size).  ``prepare`` gives the decoded image float
    ``[1, C, H, W]``; ``run`` the restored ``[1, C, sH, sW]``."""

    batched = False

    def __init__(self, run_dir: str | Path, name: str):
        from ..config import load_config
        from ..tasks import get_task
        super().__init__(run_dir, name)
        self.enhance_task = get_task(load_config(Path(run_dir) / "config.yaml"))

    def prepare(self, data: bytes, name: str = "upload"):
        from ..data import BadImageError
        from ..data.images import decode_notes, pil_to_uint8
        img = load_image_bytes(data, name, grayscale=self.grayscale, max_pixels=self.max_pixels)
        w, h = img.size
        if (why := self.enhance_task.too_small(self.model, w, h)) is not None:
            raise BadImageError(name, why)
        return (pil_to_uint8(img, self.in_chans).unsqueeze(0).float() / 255,
                {"size": (w, h), "notes": decode_notes(io.BytesIO(data), self.in_chans)})

    @torch.inference_mode()
    def run(self, pixels: torch.Tensor) -> np.ndarray:
        return self.enhance_task.run_image(self.model, pixels, channels_last=self.channels_last).numpy()


class GeneratorBackend(TorchBackend):
    """A generation run: nothing is uploaded; ``generate`` draws images (``POST /v1/models/NAME:generate``)
    with the same sampler and argument checks as ``visionsmith sample``.  ``run`` (the server's warm-up
    with a zero image) draws one image with one step, so a broken model fails at start-up."""

    batched = False
    MAX_N = 64  # images per request: a diffusion request costs steps x n network calls

    def __init__(self, run_dir: str | Path, name: str):
        from ..config import load_config
        from ..tasks import get_task
        super().__init__(run_dir, name)  # the weights, loaded once
        self.cfg = load_config(Path(run_dir) / "config.yaml")
        self.gen_task = get_task(self.cfg)
        g = self.cfg.gen
        self.output.settings = {"conditional": g.conditional, "method": self.cfg.method,
                                "steps": g.steps if self.cfg.method == "diffusion" else None,
                                "guidance": g.guidance if self.cfg.method == "diffusion" and g.conditional else None,
                                "max_n": self.MAX_N}

    def generate(self, n: int, klass: int | None, seed: int, steps: int | None, guidance: float | None) -> dict:
        """-> ``{"images": [{"png_base64", "class"}], "seconds"}``; ``UserError`` for a bad argument."""
        import base64
        import time

        from ..outputs.enhancement import png_bytes
        from ..workflows.sample import check_args
        if n > self.MAX_N:
            raise UserError(f"n={n}: at most {self.MAX_N} images per request")
        check_args(self.cfg, self.classes, n, klass, steps, guidance)
        g = self.cfg.gen
        labels = self.gen_task.sample_labels(n, len(self.classes), klass)
        t0 = time.perf_counter()
        u8 = self.gen_task.draw(self.model, n, labels, steps or g.steps, seed, n,
                                guidance=g.guidance if guidance is None else guidance)
        images = [{"png_base64": base64.b64encode(png_bytes(x.numpy())).decode("ascii"),
                   "class": self.classes[int(labels[i])] if labels is not None else None} for i, x in enumerate(u8)]
        return {"images": images, "seconds": round(time.perf_counter() - t0, 3)}

    @torch.inference_mode()
    def run(self, pixels: torch.Tensor) -> np.ndarray:
        y = torch.zeros(1, dtype=torch.long) if self.cfg.gen.conditional else None
        return self.model.sample(1, y, steps=1, sampler="ddim", guidance=1.0,
                                 generator=torch.Generator().manual_seed(0)).numpy()


class OnnxBackend(Backend):
    """A ``visionsmith export`` file (``RUN/export/model.onnx`` or ``model.int8.onnx``) on ONNX Runtime,
    through ``visionsmith.export.runtime.OnnxClassifier`` (which reads and checks the export contract:
    input ``pixels`` [N, C, S, S] in [0, 1], output ``logits``, metadata ``visionsmith``).

    onnx/onnxruntime are imported only here, so a checkpoint serves without them installed.
    """

    kind = "onnx"

    def __init__(self, path: str | Path, name: str, threads: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        try:
            import onnx  # noqa: F401 - the metadata reader needs both
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError(f"serving {path} needs onnx and onnxruntime: pip install onnx onnxruntime "
                             "(or serve the run folder's checkpoint instead)") from None
        from ..export.runtime import OnnxClassifier
        self.clf = OnnxClassifier(path, threads)  # ValueError naming the file for anything not a visionsmith export
        from ..outputs import output_for
        if not output_for(self.clf.task, []).serves_onnx:
            raise UserError(f"{path} is a {self.clf.task} export: serve its run folder (`visionsmith serve RUN`), "
                            "which restores whole images tile by tile")
        # A graph exported with a fixed batch dimension can only take batches of exactly that size.
        batch_dim = (self.clf.session.get_inputs()[0].shape or [None])[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None
        super().__init__(name, str(path), self.clf.classes, self.clf.image_size, self.clf.in_chans,
                         grayscale=self.clf.grayscale, decode_size=self.clf.decode_size, task=self.clf.task,
                         settings=self.clf.settings, max_pixels=max_pixels)

    def run(self, pixels: torch.Tensor) -> np.ndarray:
        return self.clf.predict_pixels(pixels)

    def describe(self) -> dict:
        return {**super().describe(), "int8": self.clf.int8}


_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


def default_name(path: Path) -> str:
    """``runs/digits`` -> ``digits``; ``runs/digits/export/model.onnx`` -> ``digits-onnx``;
    ``.../model.int8.onnx`` -> ``digits-int8``; any other ``x.onnx`` -> ``x``."""
    if path.suffix == ".onnx":
        if path.parent.name == "export":
            tag = "onnx" if path.name == "model.onnx" else path.name[len("model."):-len(".onnx")] or "onnx"
            base = f"{path.parent.parent.name}-{tag}"
        else:
            base = path.stem
    else:
        base = path.resolve().name
    return _NAME_OK.sub("-", base).strip("-") or "model"


BACKENDS = ("auto", "onnx", "pytorch")


def load_backend(spec: str, threads: int | None = None, backend: str = "auto",
                 parity_atol: float | None = None) -> Backend:
    """``PATH`` or ``NAME=PATH``: a run folder or an ``.onnx`` file.

    ``backend`` says how a run folder is served (an ``.onnx`` file always runs on ONNX Runtime):
    "auto" (ONNX Runtime when the run exports and passes the parity check, else PyTorch, with a
    printed reason), "onnx" (ONNX Runtime or an error) or "pytorch" (the checkpoint in eager PyTorch).
    ``parity_atol``: the fp32 bound the served graph must meet (default the export's, 1e-3).
    """
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    name, sep, path_text = spec.partition("=")
    if not sep:
        name, path_text = "", spec
    path = Path(path_text)
    name = _NAME_OK.sub("-", name).strip("-") or default_name(path)
    if path.is_file() and path.suffix == ".onnx":
        return OnnxBackend(path, name, threads)
    if path.is_dir():
        return run_backend(path, name, threads, backend, parity_atol)
    raise UserError(f"{spec}: not a run folder or an .onnx file (serve takes `visionsmith train` run folders, "
                     "their export/model.onnx files, or NAME=PATH for either)")


def run_backend(run_dir: Path, name: str, threads: int | None = None, backend: str = "auto",
                parity_atol: float | None = None) -> Backend:
    """A run folder as a backend, on ``backend`` ("auto", "onnx" or "pytorch"; see ``load_backend``)."""
    cfg = _servable_config(run_dir)  # a folder that is no servable run fails the same way on any backend
    from ..outputs import output_for
    from ..tasks import get_task
    out = output_for(get_task(cfg).name, [])
    if not (out.exportable and out.serves_onnx):  # enhancement (whole images, tiled), generation (a sampling loop)
        if backend == "onnx":
            raise UserError(f"--backend onnx: {run_dir} is a {cfg.task} run, which serves with PyTorch only")
        return GeneratorBackend(run_dir, name) if cfg.task == "generation" else ImageBackend(run_dir, name)
    if backend == "pytorch":
        return TorchBackend(run_dir, name)
    try:
        return _cached_onnx_backend(run_dir, name, threads, cfg.data.max_pixels, parity_atol)
    except Exception as e:  # noqa: BLE001 - whatever stops the export, "auto" serves the checkpoint instead
        reason = _one_line(e)
        if backend == "onnx":
            raise UserError(f"--backend onnx: {run_dir} cannot be served on ONNX Runtime: {reason} "
                            "(--backend auto serves it with PyTorch instead)") from None
        print(f"model {name}: serving with PyTorch, not ONNX Runtime: {reason}", flush=True)
        torch_backend = TorchBackend(run_dir, name)
        torch_backend.note = f"ONNX Runtime not used: {reason}"
        return torch_backend


def _servable_config(run_dir: Path):
    """The run's config, after the checks ``TorchBackend`` makes: a run folder, with weights, whose
    classifier (head) was trained."""
    from ..config import ConfigError, load_config
    from ..engine.checkpoint import CheckpointError
    from ..export.cached import weights_file
    from ..methods import trains_head
    weights_file(run_dir)  # CheckpointError: no run folder, or no weights yet
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}/config.yaml: {e}") from None
    if not trains_head(cfg):
        raise UserError(f"{run_dir} is a self-supervised pretraining run (method={cfg.method}): its classifier "
                        "was never trained, so there is nothing to serve; fine-tune a classifier from it first")
    return cfg


def _cached_onnx_backend(run_dir: Path, name: str, threads: int | None, max_pixels: int,
                         parity_atol: float | None) -> OnnxBackend:
    try:  # (the exporter also needs onnxscript; without it a cached file still serves, an export fails)
        import onnx  # noqa: F401 - the metadata reader and the runtime
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UserError(f"{e.name or 'onnx'} is not installed (pip install onnx onnxruntime)") from None
    from ..export.cached import cached_onnx, remove_if_temporary
    from ..export.parity import FP32_ATOL
    got = cached_onnx(run_dir, threads=threads, atol=FP32_ATOL if parity_atol is None else parity_atol)
    try:
        b = OnnxBackend(got.path, name, threads, max_pixels=max_pixels)
    finally:
        remove_if_temporary(got)  # the session holds the graph; a temporary file is not kept
    b.run_dir = str(run_dir)
    if got.temporary:
        b.source = f"{run_dir} (exported to a temporary file, not cached)"
    print(f"model {name}: {got.note}", flush=True)
    return b


def _one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line for the log: the message's first line (with the type for anything that
    is not a ``UserError``, i.e. not already worded for the user), at most ``limit`` characters."""
    text = (str(e).strip().splitlines() or [""])[0]
    if not isinstance(e, UserError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
