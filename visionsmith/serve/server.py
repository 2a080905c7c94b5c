"""``visionsmith serve``: check the settings, load the models, run uvicorn.

Security defaults: bind 127.0.0.1; any other address needs a token (``--token`` or the
``VISIONSMITH_SERVE_TOKEN`` environment variable, which unlike a flag does not show in ``ps``);
without a token, requests must be addressed to localhost (a Host-header check against DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import os

from ..errors import UserError
from .app import SERVE_MAX_PIXELS, ServeOptions, create_app
from .backends import load_backend
from .connections import uvicorn_options

TOKEN_ENV = "VISIONSMITH_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: yes; ``0.0.0.0``, ``::``, any other name or address: no."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is not None and not token.strip():
        raise UserError("--token is empty; give a long random string (e.g. `python -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))'`)")
    if not is_loopback(host) and not token:
        raise UserError(f"refusing to serve on {host}: that is reachable from other machines and there is no token. "
                         f"Pass --token T (or set {TOKEN_ENV}) so clients must send 'Authorization: Bearer T', "
                         "or keep the default --host 127.0.0.1")


def default_threads() -> int:
    """Torch/ONNX Runtime threads for the one inference thread: every core but one.

    The other core is for the event loop, HTTP parsing and image decoding, which run at the same
    time as a batch.  Giving inference every core makes its threads wait on each other whenever
    the HTTP side (or anything else on the machine) takes a core: on 2 cores that made a batch of
    32 at 32 px several times slower, not faster."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_batch: int = 32, max_wait_ms: float = 5.0, max_upload_mb: float = 16.0,
          max_pixels: int = SERVE_MAX_PIXELS, threads: int | None = None, access_log: bool = True,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None, backend: str = "auto",
          max_inflight_mb: float | None = None, header_timeout: float = 10.0, body_timeout: float = 60.0,
          keepalive_timeout: float = 5.0) -> None:
    """Load every model in ``specs`` (run folders, ``.onnx`` files, ``NAME=PATH``) and serve them
    until interrupted.  Errors in the settings or the models are raised before anything listens.
    ``backend``: how run folders are served, "auto" (ONNX Runtime, exported once and cached, else
    PyTorch), "onnx" or "pytorch" (``visionsmith.serve.backends.load_backend``).
    ``max_inflight_mb`` (None: the larger of 256 and 4 x ``max_upload_mb``; 0: no limit) and the
    timeouts in seconds: see ``ServeOptions`` and docs/serving.md "Limits and timeouts"."""
    import torch
    import uvicorn

    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)  # set but empty = unset
    check_bind(host, token)
    if not specs:
        raise UserError("nothing to serve: give at least one run folder or .onnx file")
    if max_batch < 1 or max_wait_ms < 0 or max_upload_mb <= 0 or max_pixels < 1:
        raise UserError("--max-batch and --max-pixels must be >= 1, --max-wait-ms >= 0, --max-upload-mb > 0")
    threads = threads or default_threads()
    # Inference runs one batch at a time in one thread, with `threads` intra-op threads.  Large
    # uploads decode in a small pool of their own (PIL releases the GIL), overlapping with inference.
    torch.set_num_threads(threads)
    backends = [load_backend(s, threads, backend) for s in specs]
    opts = ServeOptions(token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                        decode_threads=max(2, min(4, threads)), loopback_only=not token,
                        max_inflight_bytes=None if max_inflight_mb is None else int(max_inflight_mb * 2**20),
                        header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                        keepalive_timeout_s=keepalive_timeout)
    app = create_app(backends, opts)
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    for b in backends:
        size = f"{b.in_chans}x{b.image_size}x{b.image_size}"
        print(f"model {b.name}: {b.kind} {b.source} ({len(b.classes)} classes, {size})")
    threads_text = f"{threads} thread{'s' if threads != 1 else ''}"
    print(f"serving on {scheme}://{shown}:{port}/  (page /, API /docs, metrics /metrics; max batch {max_batch}, "
          f"max wait {max_wait_ms} ms, {threads_text}{', token required' if token else ''})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5,
                **uvicorn_options(app))  # timeouts and head limit (serve/connections.py)
