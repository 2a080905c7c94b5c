"""Run an exported visionsmith ONNX model with ONNX Runtime (``predict``, ``serve``, benchmarks).

The contract every exported file keeps (``visionsmith export`` writes it, this module reads it):

- one input ``pixels``: float32 ``[N, in_chans, S, S]`` in [0, 1], N dynamic (normalisation is
  inside the graph: the model's own ``pixel_norm``, see ``visionsmith.models._base``);
- one output ``logits``: float32 ``[N, K]`` for classification, ``[N, K, S, S]`` (per-pixel class
  scores at the input size; argmax over K is the class map) for segmentation;
- ``metadata_props["visionsmith"]``: JSON with ``classes``, ``image_size`` (S), ``in_chans``,
  ``task`` ("classification" or "segmentation"), ``output`` (the logits in words), ``run``, ``int8``,
  ``opset``, and ``preprocess`` (``decode_size``, ``grayscale``: how the run decodes a file before
  resizing to S); segmentation adds ``palette`` (class colours) and ``background``.

    clf = OnnxModel("runs/fm/export/model.int8.onnx")
    pixels = clf.preprocess(torch.stack([clf.decode(p) for p in paths]))  # float32 [N, C, S, S]
    logits = clf.predict_pixels(pixels)                                     # float32 [N, K] (or [N, K, S, S])
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

METADATA_KEY = "visionsmith"
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


def read_metadata(path: str | Path) -> dict:
    """The ``visionsmith`` metadata of an exported ONNX file (graph not loaded into a session).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not ONNX
    or was not written by ``visionsmith export``.
    """
    import onnx
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file; write one with `visionsmith export RUN`")
    try:
        # load_external_data=False: only the header is needed here, weights may stay on disk.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf/IO errors all mean "not an ONNX model"
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{path} is an ONNX model but not a visionsmith export (no '{METADATA_KEY}' metadata); "
                         "export a run folder with `visionsmith export RUN`")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    missing = [k for k in ("classes", "image_size", "in_chans", "task") if k not in meta]
    if missing:
        raise UserError(f"{path}: its '{METADATA_KEY}' metadata lacks {', '.join(missing)}; re-export it")
    from ..outputs import output_for, output_tasks
    runnable = [t for t in output_tasks() if output_for(t, []).exportable]
    if meta["task"] not in runnable:
        raise UserError(f"{path} is a {meta['task']!r} export; only {', '.join(runnable)} exports can be run here")
    return meta


def session_options(threads: int | None = None, spin: bool | None = None):
    """ORT session options: ``threads`` intra-op threads (None: ORT's default, all cores), one
    inter-op thread (a CNN is a chain; parallel branches buy nothing and add a second pool).

    ``spin``: whether idle intra-op threads busy-wait for the next op (None: ORT's default, on).
    Spinning shaves a little off each call when the cores are otherwise idle; on cores shared with
    other busy processes (a server's request threads, a training job) it costs throughput.  Measured
    with simple_cnn at 28 px, 2 threads, on the project's 2-core machine at load average ~7: batch 1
    p50 0.09 ms spinning vs 0.13 ms not; batch 32 ~3,000 vs ~9,000 images/s."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


class OnnxModel:
    """An exported visionsmith model (classifier or segmenter) in an ONNX Runtime CPU session.

    ``threads``/``spin``: see ``session_options``.
    Attributes: ``classes`` (list of K names), ``task``, ``image_size`` (S), ``in_chans`` (C), ``int8``,
    ``meta`` (the whole metadata dict), ``path``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        self.classes: list[str] = list(self.meta["classes"])
        self.task: str = self.meta["task"]
        self.settings: dict = dict(self.meta.get("postprocess") or {})  # detection: score threshold, NMS IoU...
        self.image_size: int = int(self.meta["image_size"])
        self.in_chans: int = int(self.meta["in_chans"])
        self.int8: bool = bool(self.meta.get("int8", False))
        self.free_size: bool = bool(self.meta.get("free_size", False))  # any H, W (enhancement)
        pre = self.meta.get("preprocess", {})
        self.decode_size: int = int(pre.get("decode_size", self.image_size))
        self.grayscale: bool = bool(pre.get("grayscale", self.in_chans == 1))
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads, spin),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every failure
            raise UserError(f"{self.path}: ONNX Runtime {ort.__version__} cannot load it ({e})") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT_NAME]:
            raise UserError(f"{self.path}: expected one input named {INPUT_NAME!r}, found {names}")
        # Eval resize and channel matching to [0, 1] pixels (the graph normalises): the same
        # BatchTransform code the run evaluates with, so pixels agree.
        from ..data import BatchTransform
        self._resize = BatchTransform(False, self.image_size, self.in_chans)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, task={self.task}, classes={len(self.classes)}, "
                f"image_size={self.image_size}, in_chans={self.in_chans}, int8={self.int8})")

    def decode(self, path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
        """An image file -> uint8 ``[C, decode_size, decode_size]`` exactly as the run decodes it
        (shorter side scaled, centre crop; gray or RGB as the training data).  Raises ``BadImageError``."""
        from ..data import DEFAULT_MAX_PIXELS, image_to_uint8, load_image
        img = load_image(path, grayscale=self.grayscale, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        return image_to_uint8(img, self.decode_size, self.grayscale)

    def preprocess(self, images: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, C, h, w]`` (or float in [0, 1]) -> float32 pixels ``[N, in_chans, S, S]`` in [0, 1]."""
        with torch.no_grad():
            return self._resize(images, None).numpy()

    def predict_pixels(self, pixels) -> np.ndarray:
        """float32 pixels ``[N, in_chans, S, S]`` in [0, 1] (numpy or torch) -> logits ``[N, K]`` or
        ``[N, K, S, S]`` (numpy)."""
        x = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        want = (self.in_chans, self.image_size, self.image_size)
        if self.free_size and x.ndim == 4 and x.shape[1] == self.in_chans:
            want = tuple(x.shape[1:])
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise UserError(f"expected pixels [N, {want[0]}, {want[1]}, {want[2]}], got shape {tuple(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


OnnxClassifier = OnnxModel  # the name from when every export was a classifier
