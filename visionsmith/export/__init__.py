"""Ship a trained run: ONNX export (fp32, INT8) checked against PyTorch, and ONNX Runtime inference.

    export_onnx(run_dir, int8=None | "static" | "dynamic", opset=20, out=None) -> ExportResult
    OnnxModel(path).predict_pixels(pixels [N, C, S, S] in [0, 1]) -> logits [N, K] (or [N, K, S, S])
    cached_onnx(run_dir) -> CachedOnnx          # serve's copy: exported once, reused while the run is unchanged

Heavy imports (onnx, onnxruntime, onnxscript) happen inside the functions that need them.
"""
from .cached import CachedOnnx, cached_onnx
from .onnx import DEFAULT_OPSET, ExportResult, export_onnx, opset_range
from .parity import ExportError, ParityError
from .runtime import METADATA_KEY, OnnxClassifier, OnnxModel, read_metadata

__all__ = ["DEFAULT_OPSET", "METADATA_KEY", "CachedOnnx", "ExportError", "ExportResult", "OnnxClassifier",
           "OnnxModel", "ParityError", "cached_onnx", "export_onnx", "opset_range", "read_metadata"]
