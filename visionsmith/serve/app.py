"""The FastAPI app: routes, auth, errors, metrics and the web page.

    app = create_app([load_backend("runs/digits")], ServeOptions(token="s3cret"))

Routes (``/v1/...`` and ``/metrics`` need ``Authorization: Bearer TOKEN`` when a token is set):

    GET  /                          the web page (static files from visionsmith/serve/static/)
    GET  /healthz                   {"status": "ok", "models": [...]}, always open (probes)
    GET  /v1/models                 every model: name, kind, task, classes, input size
    GET  /v1/models/{name}          one model
    POST /v1/models/{name}:predict  per image: top-k classes (classification) or a class mask as a
                                    palette PNG in base64 with per-class pixel fractions (segmentation)
    GET  /metrics                   Prometheus text format
    GET  /docs, /openapi.json       OpenAPI schema and Swagger UI (served locally, no CDN)

Every client mistake is a 4xx with ``{"detail": "..."}`` saying what to do; a 5xx only ever
means the server itself failed (or, 503, is full: queue or bytes in flight; retry after Retry-After).
A client that goes away before its answer is counted as status 499 in ``/metrics`` (as nginx does),
with nothing logged.

Memory under load: request bodies share one budget (``ServeOptions.max_inflight_bytes``, see
``uploads.InflightBytes``); a request holds its share from its first byte until its answer is ready,
so decoding and the model's work on it are covered.  Slow clients: ``body_timeout_s`` here, the
head, idle and keep-alive timeouts in the connection protocol (``connections.uvicorn_options``).
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect

from ..data import BadImageError
from ..errors import UserError
from .backends import Backend, is_small_image
from .batching import Batcher, ServerBusy
from .metrics import Metrics
from .uploads import ClientError, InflightBytes, parse_topk, read_images, status_for

STATIC = Path(__file__).parent / "static"
# Far below Pillow's ~89 M: a 4096 x 4096 RGB image already decodes to 48 MB, and the server may
# decode several at once.  `visionsmith serve --max-pixels` changes it.
SERVE_MAX_PIXELS = 4096 * 4096
INLINE_MAX_PIXELS = 256 * 256  # uploads up to this size decode on the event loop (see decode_all)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Request-body bytes in flight: with the default 16 MB upload limit, 16 uploads of the largest size
# at once.  Under a flood of large uploads the server's memory grows by about twice this (a body is
# briefly held twice while its pieces are joined, and decoding needs its own), whatever the number
# of clients: benchmarks/serve_abuse.py, figures in docs/serving.md "Limits and timeouts".
DEFAULT_MAX_INFLIGHT = 256 * 2**20
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection before the answer

# The page loads nothing but its own files: the browser itself enforces "no CDN".
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                           "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


@dataclass
class ServeOptions:
    """Server settings (the ``visionsmith serve`` flags)."""

    token: str | None = None  # None: no auth (loopback only; `serve` enforces that)
    max_batch: int = 32  # images per model call; 1 = no batching
    max_wait_ms: float = 5.0  # the most a batch waits for requests already arriving (batching.py)
    max_upload_bytes: int = 16 * 2**20  # whole request body
    max_pixels: int = SERVE_MAX_PIXELS  # per image, checked from the header before decoding
    max_images: int = 64  # images in one request
    max_queue: int = 1024  # images waiting per model before 503
    topk: int = 5  # default top-k
    decode_threads: int = 2  # image decoding runs here, off the event loop
    loopback_only: bool = False  # reject requests whose Host header is not loopback (DNS rebinding)
    # Bytes of request bodies held at once (503 + Retry-After beyond); None: the larger of
    # DEFAULT_MAX_INFLIGHT and 4 x max_upload_bytes; 0: no limit.
    max_inflight_bytes: int | None = None
    header_timeout_s: float = 10.0  # a request's head must arrive within this (408, closed); also a silent connection
    body_timeout_s: float = 60.0  # the whole body must arrive within this (408, closed)
    keepalive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this (uvicorn's own timer)
    max_head_bytes: int = 64 * 2**10  # request line + headers (431, closed)

    def inflight_limit(self) -> int | None:
        """The in-flight byte limit in force (None: no limit)."""
        if self.max_inflight_bytes is None:
            return max(DEFAULT_MAX_INFLIGHT, 4 * self.max_upload_bytes)
        return self.max_inflight_bytes or None


def create_app(backends: list[Backend], opts: ServeOptions | None = None) -> FastAPI:
    """The app serving ``backends`` (names must be unique).  Batchers and thread pools start with
    the app's lifespan (``uvicorn`` or ``with TestClient(app)``).  Each backend's ``max_pixels`` is
    lowered to ``opts.max_pixels``."""
    opts = opts or ServeOptions()
    if opts.max_queue < opts.max_images:
        raise UserError(f"max_queue ({opts.max_queue}) must be >= max_images ({opts.max_images})")
    if opts.max_inflight_bytes is not None and opts.max_inflight_bytes < 0:
        raise UserError(f"--max-inflight-mb must be >= 0 (0: no limit), got {opts.max_inflight_bytes / 2**20:g}")
    inflight = InflightBytes(opts.inflight_limit())
    if inflight.limit is not None and inflight.limit < opts.max_upload_bytes:
        raise UserError(f"the limit on bytes in flight ({inflight.limit / 2**20:g} MB, --max-inflight-mb) is below the "
                         f"upload limit ({opts.max_upload_bytes / 2**20:g} MB, --max-upload-mb): an upload within its limit "
                         "could never be received; raise it, or give 0 for no limit")
    if min(opts.header_timeout_s, opts.body_timeout_s, opts.keepalive_timeout_s) <= 0:
        raise UserError("--header-timeout, --body-timeout and --keepalive-timeout must be > 0 seconds")
    for b in backends:
        b.max_pixels = min(b.max_pixels, opts.max_pixels)
    models = {b.name: b for b in backends}
    if len(models) != len(backends):
        dup = sorted({b.name for b in backends if sum(c.name == b.name for c in backends) > 1})
        raise UserError(f"two models are named {', '.join(dup)}; name them with NAME=PATH")
    metrics = Metrics()
    metrics.inflight_bytes.set_function(lambda: inflight.used)
    metrics.inflight_limit.set(inflight.limit or 0)
    batchers = {n: Batcher(b, metrics, opts.max_batch, opts.max_wait_ms, opts.max_queue) for n, b in models.items()}
    pools: dict[str, ThreadPoolExecutor] = {}

    @asynccontextmanager
    async def lifespan(app):
        # One inference thread for all models: one batch at a time, using the torch/ORT threads.
        pools["infer"] = ThreadPoolExecutor(1, thread_name_prefix="vs-infer")
        pools["decode"] = ThreadPoolExecutor(opts.decode_threads, thread_name_prefix="vs-decode")
        loop = asyncio.get_running_loop()
        for b in models.values():  # warm-up: the first call of a model is slow, and a broken one fails here
            x = torch.zeros(1, b.in_chans, b.image_size, b.image_size)
            await loop.run_in_executor(pools["infer"], b.run, x)
        for bt in batchers.values():
            bt.start(pools["infer"])
        # torch, transformers and the models are ~200k long-lived objects: a full garbage collection
        # walks them all (~0.1 s here) and stalls every request in flight.  Freezing them after
        # start-up takes them out of collections (measured: 116 ms -> 0 ms), so p99 stays flat.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            for bt in batchers.values():
                await bt.stop()
            for p in pools.values():
                p.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(title="visionsmith serve", version="1", lifespan=lifespan,
                         description="Image classification and segmentation over HTTP with dynamic batching. "
                                     "Send `Authorization: Bearer TOKEN` when the server has a token.")
    app.state.models, app.state.batchers, app.state.metrics, app.state.options = models, batchers, metrics, opts
    app.state.inflight = inflight
    app.add_middleware(MetricsMiddleware, metrics=metrics, loopback_only=opts.loopback_only)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, e: ClientError):
        return JSONResponse({"detail": e.message, **e.extra}, status_code=e.status, headers=e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, e: ClientDisconnect):
        # Nobody is there to read an answer (uvicorn drops it): this only tells the metrics what happened.
        return Response(status_code=CLIENT_CLOSED)

    async def auth(request: Request) -> None:  # async: FastAPI would run a plain def in a thread
        if opts.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), opts.token.encode()):
            raise ClientError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                              headers={"WWW-Authenticate": "Bearer"})

    def model(name: str) -> Backend:
        if name not in models:
            raise ClientError(404, f"no model named {name!r}; known models: {', '.join(models)}", models=list(models))
        return models[name]

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # browsers ask for it whatever the page says
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness: always open, even with a token")
    async def healthz():
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models", dependencies=[Depends(auth)], summary="The models this server serves")
    async def list_models():
        return {"models": [b.describe() for b in models.values()]}

    @app.get("/v1/models/{name}", dependencies=[Depends(auth)], summary="One model")
    async def get_model(name: str):
        base, sep, verb = name.rpartition(":")
        if sep and verb in ("predict", "generate"):  # GET on those routes lands here (the {name} segment holds the ':')
            raise ClientError(405, f"{name} takes POST ({'an image' if verb == 'predict' else 'JSON'} in the body), "
                              "not GET", headers={"Allow": "POST"})
        return model(name).describe()

    @app.post("/v1/models/{name}:predict", dependencies=[Depends(auth)],
              summary="Predictions for images: top-k classes, or a class mask", openapi_extra=PREDICT_OPENAPI)
    async def predict(name: str, request: Request):
        t0 = time.perf_counter()
        backend, batcher = model(name), batchers[name]
        if hasattr(backend, "generate"):
            raise ClientError(400, f"{name} draws images and reads none: POST /v1/models/{name}:generate with JSON "
                              "such as {\"n\": 8, \"class\": 7}")
        # The body's bytes count against the in-flight budget from the first byte (its Content-Length,
        # before reading) until the answer is ready: the upload bytes live until decoded, and its
        # decoded windows until the model ran, so the reservation stands for both (the windows, at the
        # model's size, are also bounded per model by the queue limit).
        with inflight.reserve() as held:
            with batcher.arriving():  # a batch being collected may wait for this request
                images, options = await read_images(request, opts.max_upload_bytes, opts.max_images, held,
                                                    opts.body_timeout_s)
                k = parse_topk(options.get("topk", request.query_params.get("topk")), opts.topk, len(backend.classes))
                prepared = await decode_all(backend, images, pools["decode"])  # per image: (windows, context)
                names = [n for n, _ in images]
                del images  # the upload bytes: only the names are needed from here on
                if backend.batched:
                    try:
                        result = batcher.enqueue(torch.cat([px for px, _ in prepared]))
                    except ServerBusy as e:
                        raise ClientError(503, str(e), headers={"Retry-After": "1"}) from None
                else:  # whole images of any size (enhancement): each its own call on the inference thread
                    result = _one_by_one(backend, [px for px, _ in prepared], pools["infer"])
            logits = await result
            if await request.is_disconnected():  # answered nobody: count it as what it is (499)
                raise ClientDisconnect()
            metrics.images.labels(name).inc(len(names))
            out, at, parts = backend.output, 0, []  # each image's rows (1 per image, or its windows), its context
            for n, (px, ctx) in zip(names, prepared):
                parts.append((logits[at:at + len(px)], ctx, n))
                at += len(px)
            if out.answer_off_loop:  # a mask answer (stitching, PNG encoding) is real work: off the event loop
                loop = asyncio.get_running_loop()
                preds = await asyncio.gather(*(loop.run_in_executor(pools["decode"], out.answer, lg, ctx, n, k)
                                               for lg, ctx, n in parts))
            else:
                preds = [out.answer(lg, ctx, n, k) for lg, ctx, n in parts]
        # A JSONResponse skips FastAPI's generic encoder walk over the result (plain types already).
        return JSONResponse({"model": name, "predictions": list(preds),
                             "latency_ms": round(1000 * (time.perf_counter() - t0), 2)})

    @app.post("/v1/models/{name}:generate", dependencies=[Depends(auth)],
              summary="Draw images from a generation model",
              description='JSON body, every field optional: {"n": 8, "class": 7, "seed": 0, "steps": 50, '
                          '"guidance": 2.0}.  The same seed gives the same images.')
    async def generate(name: str, request: Request):
        backend = model(name)
        if not hasattr(backend, "generate"):
            raise ClientError(400, f"{name} is a {backend.task} model: it answers POST /v1/models/{name}:predict")
        try:
            body = await request.json() if int(request.headers.get("content-length") or 0) else {}
        except ValueError:
            raise ClientError(400, "the body must be JSON, e.g. {\"n\": 8, \"class\": 7}") from None
        if not isinstance(body, dict):
            raise ClientError(400, "the body must be a JSON object, e.g. {\"n\": 8, \"class\": 7}")

        def arg(key, kind, default=None):
            v = body.get(key, default)
            if v is not None and (isinstance(v, bool) or not isinstance(v, kind)):
                raise ClientError(400, f"{key} must be a number, got {v!r}")
            return v
        n, klass, seed = arg("n", int, 8), arg("class", int), arg("seed", int, 0)
        steps, guidance = arg("steps", int), arg("guidance", (int, float))
        loop = asyncio.get_running_loop()
        try:  # on the inference thread, one request at a time with the other models' batches
            res = await loop.run_in_executor(pools["infer"], backend.generate, n, klass, seed, steps,
                                             None if guidance is None else float(guidance))
        except UserError as e:  # the sample command's checks: name the JSON keys, not the CLI's flags
            raise ClientError(400, re.sub(r"--(n|class|steps|guidance)\b", r"\1", str(e))) from None
        metrics.images.labels(name).inc(n)
        return JSONResponse({"model": name, **res})

    @app.get("/metrics", dependencies=[Depends(auth)], summary="Prometheus metrics (text format)")
    async def prometheus(request: Request):
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return app


async def _one_by_one(backend: Backend, inputs: list, pool: ThreadPoolExecutor) -> list:
    """``backend.run`` on each input in turn on the inference thread -> the outputs, in order (a list:
    the predict route slices it per image like a batch's rows)."""
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(pool, backend.run, x) for x in inputs]


async def decode_all(backend: Backend, images: list[tuple[str, bytes]], pool: ThreadPoolExecutor) -> list:
    """Decode every image -> per image ``backend.prepare``'s (float32 windows ``[n_i, C, S, S]``,
    context); any bad one fails the whole request (4xx naming each bad image), before anything
    reaches the model.

    Small images (a header that says at most ``INLINE_MAX_PIXELS``) decode right here: well under a
    millisecond, less than the hop to a thread and back.  Larger ones go to ``pool``, so the event
    loop keeps serving while a photo decodes."""
    loop = asyncio.get_running_loop()

    def inline(n, data):
        fut = loop.create_future()
        try:
            fut.set_result(backend.prepare(data, n))
        except Exception as e:  # noqa: BLE001 - sorted out below, like the pool's exceptions
            fut.set_exception(e)
        return fut

    results = await asyncio.gather(*(inline(n, data) if is_small_image(data, INLINE_MAX_PIXELS)
                                     else loop.run_in_executor(pool, backend.prepare, data, n)
                                     for n, data in images), return_exceptions=True)
    bad = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    for _, r in bad:
        if not isinstance(r, BadImageError):
            raise r  # not the client's fault: a real 500
    if bad:
        codes = {status_for(r) for _, r in bad}
        errors = [{"index": i, "filename": images[i][0], "reason": r.reason} for i, r in bad]
        msg = "; ".join(f"{e['filename']}: {e['reason']}" for e in errors)
        code = codes.pop() if len(codes) == 1 else 400
        if code == 413:  # too many pixels: say which limit, and that the server sets it
            msg += f" (this server's limit is {backend.max_pixels} pixels per image, set with --max-pixels)"
        raise ClientError(code, msg, errors=errors)
    return list(results)


class MetricsMiddleware:
    """Pure ASGI (no per-request task like BaseHTTPMiddleware): counts every response by route
    template and status, times it, and optionally refuses non-loopback Host headers."""

    def __init__(self, app, metrics: Metrics, loopback_only: bool = False):
        self.app, self.metrics, self.loopback_only = app, metrics, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        root = scope.get("root_path", "")
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.loopback_only and not _loopback_host(scope):
                # A page on another site that resolves its own name to 127.0.0.1 (DNS rebinding)
                # would send its own Host: answer it nothing.
                await JSONResponse({"detail": "this server only answers requests addressed to localhost; "
                                              "start it with --host and --token to serve other names"},
                                   status_code=421)(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route on the shared scope (a template, not the raw URL); a
            # mount (static files) leaves only its prefix in root_path.
            route = scope.get("route")
            mount = scope.get("root_path", "")[len(root):]
            handler = getattr(route, "path", None) or (f"{mount}/*" if mount else "unmatched")
            self.metrics.requests.labels(handler, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(handler).observe(time.perf_counter() - t0)


def _loopback_host(scope) -> bool:
    for k, v in scope.get("headers", []):
        if k == b"host":
            host = v.decode("latin-1").strip().lower()
            host = host.rsplit(":", 1)[0] if not host.endswith("]") else host  # drop the port
            return host in LOOPBACK_HOSTS
    return False


PREDICT_OPENAPI = {
    "parameters": [{"name": "topk", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
                    "description": "how many classes per image (default 5, capped at the number of classes)"}],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "one or more image files (PNG, JPEG, WebP, GIF, BMP, TIFF)"},
            "topk": {"type": "integer"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "description": "base64 image (a data: URL is fine)"},
            "images": {"type": "array", "items": {"type": "string"}},
            "topk": {"type": "integer"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }},
    "responses": {
        "200": {"description": "per image, in request order: top-k classes (`topk`), or for a segmentation "
                               "model the class mask (`mask.png_base64`: palette PNG of class indices at the "
                               "upload's size; `fractions`: each class's share of the pixels; `classes`: the "
                               "classes found with their colours; `mean_confidence`); and the server-side latency"},
        "400": {"description": "empty body, corrupt image, bad base64 or JSON"},
        "401": {"description": "missing or wrong token"},
        "404": {"description": "unknown model (the answer lists the known ones)"},
        "408": {"description": "the body did not arrive within the body timeout (the connection is closed)"},
        "413": {"description": "upload, pixel count or image count over the limit (the answer names it)"},
        "415": {"description": "not an image, or an unsupported Content-Type"},
        "503": {"description": "queue full, or the limit on upload bytes in flight reached; retry after "
                               "the Retry-After seconds"},
    },
}
