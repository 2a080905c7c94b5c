"""Serving: a REST API with dynamic batching and a web page, for run folders and ONNX files.

    visionsmith serve runs/digits runs/digits/export/model.onnx --port 8000

    from visionsmith.serve import create_app, load_backend, ServeOptions
    app = create_app([load_backend("runs/digits")], ServeOptions(max_batch=32))

Modules: ``backends`` (checkpoint and ONNX models behind one interface, upload decoding),
``batching`` (the dynamic batcher), ``uploads`` (request bodies -> image bytes, 4xx rules),
``app`` (routes, auth, metrics middleware), ``metrics`` (Prometheus), ``server`` (the CLI entry:
bind checks, threads, uvicorn), ``static/`` (the page).
"""
from .app import ServeOptions, create_app
from .backends import Backend, OnnxBackend, TorchBackend, load_backend
from .server import serve

__all__ = ["Backend", "OnnxBackend", "ServeOptions", "TorchBackend", "create_app", "load_backend", "serve"]
