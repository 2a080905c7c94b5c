"""INT8 quantization of an exported fp32 ONNX classifier with ``onnxruntime.quantization``.

Static (the default): activation ranges calibrated on real images, written as QDQ
(QuantizeLinear/DequantizeLinear pairs around each op); ONNX Runtime fuses Q -> Conv -> DQ into
integer kernels at load time.  Dynamic (fallback, no images needed): only the weights are
quantized ahead of time, activation ranges are computed per batch at run time (ConvInteger /
MatMulInteger); made for transformers and RNNs, slow and lossy on CNNs (see the README).

Defaults, measured on the project's 2-core AMD EPYC (AVX2, AVX512-VNNI and AVX-VNNI) with a
1-epoch MobileNetV2 at 32 px on Fashion-MNIST (fp32 accuracy 0.8865 on 2000 test images), ONNX
Runtime 1.32, 2 threads, batch 32; speed relative to ONNX Runtime fp32 in the same process (the
machine was shared, so +-20%), accuracy change in points:

    QDQ, per-channel weights, u8 activations x s8 weights   1.8x   +0.2   <- the default
    the same with reduce_range (7-bit weights)               1.8x   -0.2
    QDQ, per-channel, s8 x s8 (ORT's default types)          0.7x   +0.2
    QDQ, per-channel, u8 x u8                                1.0x   +0.2
    QDQ, per-tensor weights, u8 x s8                         2.0x  -10.3   (depthwise convs need per-channel)
    QOperator (QLinearConv), u8 x s8 / s8 x s8               1.4x / 0.05x
    QDQ, only Conv and Gemm quantized (Add left in float)    1.0x   -0.4   (Q/DQ pairs around every Add)
    dynamic (ConvInteger, activations quantized per batch)   0.08x -10.8

u8s8 is the layout x86 integer kernels are built for: AVX2's VPMADDUBSW and VNNI's VPDPBUSD
both multiply unsigned by signed bytes.  Without VNNI, VPMADDUBSW adds pairs of u8*s8 products
into int16 with saturation, so ``reduce_range`` (7-bit weights) is switched on for CPUs without
VNNI (ONNX Runtime's own advice); with VNNI the sum goes straight to int32 and full range is safe.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError

INT8_MODES = ("static", "dynamic")


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (u8*s8 dot products summed in int32)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


class _AxisNoise(logging.Filter):
    """ORT's quantizer logs "Axis 1 is out-of-range for weight ..." on the root logger for every 1-D
    weight it cannot quantize per channel (a GroupNorm scale, exported as InstanceNormalization, in
    the segmentation heads); it then quantizes that weight per tensor, which is right.  Not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Axis ") and "out-of-range for weight" in msg)


@contextlib.contextmanager
def _quiet_axis_warnings():
    root, f = logging.getLogger(), _AxisNoise()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


class _Batches:
    """``CalibrationDataReader`` over [0, 1] pixels ``[N, C, S, S]``, ``batch`` images per call."""

    def __init__(self, pixels: np.ndarray, input_name: str, batch: int = 32):
        self.pixels, self.name, self.batch, self.i = pixels, input_name, batch, 0

    def get_next(self):
        if self.i >= len(self.pixels):
            return None
        x = self.pixels[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self):
        self.i = 0


def float_nodes(path: Path, scopes: list[str]) -> list[str]:
    """Names of the nodes of the ONNX file at ``path`` that the module paths ``scopes`` run in their own
    ``forward`` (not in a submodule), from what the dynamo exporter records in each node's
    ``pkg.torch.onnx.name_scopes`` (``['', 'head', 'where_13']``: an op of ``head.forward``)."""
    import ast

    import onnx
    out = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            names = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            continue
        if len(names) >= 2 and names[-2] in scopes:
            out.append(node.name)
    return out


def quantize_int8(fp32_path: Path, out_path: Path, mode: str = "static", calib: np.ndarray | None = None,
                  input_name: str = "pixels", reduce_range: bool | None = None, per_channel: bool = True,
                  float_scopes: list[str] | tuple = ()) -> dict:
    """Quantize ``fp32_path`` into ``out_path``; returns the settings used (for export.json).

    ``calib``: float32 pixels ``[N, C, S, S]`` in [0, 1] for ``mode="static"`` (N >= 1).
    ``reduce_range``: None = on exactly when this CPU has no VNNI (see the module docstring).
    ``float_scopes``: module paths whose own ops stay float (``float_nodes``): a detector's box decoding,
    NMS and RoIAlign work on pixel coordinates, which 8 bits over a 0-96 px range would round to 0.4 px.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if mode not in INT8_MODES:
        raise UserError(f"--int8 must be one of {', '.join(INT8_MODES)}, got {mode!r}")
    if reduce_range is None:
        reduce_range = not has_vnni()
    with tempfile.TemporaryDirectory(prefix="vs-quant-", dir=out_path.parent) as tmp, _quiet_axis_warnings():
        # Shape inference + ORT's graph optimisations before quantizing (ORT's recommended first
        # step): ranges are then calibrated on the graph that will actually run.
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))
        except Exception:  # noqa: BLE001 - ORT raises a bare Exception("Incomplete symbolic shape inference")
            # a graph with free height and width (an upsampler: bicubic resize, pixel shuffle) defeats ORT's
            # symbolic shape inference; ONNX's own shape inference and the graph optimisations still run
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        if mode == "static":
            if calib is None or len(calib) == 0:
                raise UserError("static INT8 needs calibration images; got none")
            reader = type("Reader", (_Batches, CalibrationDataReader), {})(calib, input_name)
            # from the exported file: pre-processing drops the scopes but keeps the names of the nodes it leaves
            exclude = float_nodes(fp32_path, list(float_scopes)) if float_scopes else []
            quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=exclude)
            return {"mode": "static", "format": "QDQ", "activations": "uint8", "weights": "int8",
                    "per_channel": per_channel, "reduce_range": reduce_range, "calibration": "minmax",
                    "calib_images": int(len(calib)), **({"float_scopes": list(float_scopes),
                                                         "float_nodes": len(exclude)} if float_scopes else {})}
        quantize_dynamic(str(pre), str(out_path), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8)
        return {"mode": "dynamic", "format": "ConvInteger/MatMulInteger", "activations": "uint8 (per batch)",
                "weights": "int8", "per_channel": per_channel, "reduce_range": reduce_range}
