"""Dynamic batching: images from concurrent requests run through the model as one batch.

One ``Batcher`` per model.  Requests put their decoded images on an asyncio queue and await a
future each; one worker task takes every waiting image (up to ``max_batch``), runs them as one batch
in the inference thread (so the event loop keeps accepting, parsing and decoding meanwhile) and
hands each future its row of logits.  While a batch runs the next one fills up, so batches grow
with the load on their own.

The wait rule: after taking what is queued, the worker waits for more only while other requests
are *arriving* (inside the handler, being read or decoded: ``with batcher.arriving():``), and at
most ``max_wait_ms`` after the first image.  A lone request therefore never waits (no latency is
added at low load), while under load the requests that are a moment away join the batch instead of
making the next one.  ``max_batch=1`` is one-by-one serving.

Only decoded, valid images ever reach the queue: a bad upload fails its own request at decode time.
If a batch still raises (a model error nobody expected), every image in it is retried on its own,
so only the image that really fails gets the error and the others are answered.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .backends import Backend
from .metrics import Metrics

log = logging.getLogger("visionsmith.serve")


class ServerBusy(RuntimeError):
    """The queue is full: the server answers 503 instead of letting latency grow without bound."""


@dataclass
class _Item:
    pixels: torch.Tensor  # float32 [C, S, S]
    future: asyncio.Future


class Batcher:
    """``await batcher.submit(pixels [n, C, S, S]) -> logits [n, K]`` (numpy), batched with others.

    ``start(executor)`` names where ``backend.run`` is called: the app passes one thread shared by
    all models, so only one batch runs at a time and it gets every core (torch's intra-op threads).
    """

    def __init__(self, backend: Backend, metrics: Metrics, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024):
        if max_batch < 1:
            raise UserError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise UserError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.backend = backend
        self.max_batch = min(max_batch, backend.max_batch or max_batch)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.executor: ThreadPoolExecutor | None = None
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._arriving = 0  # requests between handler start and enqueue
        self._wake: asyncio.Event | None = None  # set on every enqueue and every arrival that ends

    # -- life cycle (called from the app's lifespan, inside the event loop) ----------------------

    def start(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        # Per-model metric children looked up once; the queue depth is read when /metrics is scraped.
        name = self.backend.name
        self._batch_size = self.metrics.batch_size.labels(name)
        self._inference_seconds = self.metrics.inference_seconds.labels(name)
        queue = self._queue
        self.metrics.queue_depth.labels(name).set_function(queue.qsize)
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.backend.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None

    # -- requests ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def arriving(self):
        """Wrap a request's reading and decoding (and its ``enqueue``): while inside, a batch being
        collected may wait (up to ``max_wait_ms``) for this request's images."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wake is not None:
                self._wake.set()

    async def submit(self, pixels: torch.Tensor) -> np.ndarray:
        """Queue ``n`` images of one request; returns their logits ``[n, K]`` in order."""
        return await self.enqueue(pixels)

    def enqueue(self, pixels: torch.Tensor) -> Awaitable[np.ndarray]:
        """Queue ``n`` images now (no await); awaiting the result gives their logits ``[n, K]``."""
        if self._queue is None:
            raise RuntimeError("batcher not started (the app's lifespan did not run)")
        if self._queue.qsize() + len(pixels) > self.max_queue:
            raise ServerBusy(f"{self._queue.qsize()} images are waiting for model {self.backend.name!r} "
                             f"(limit {self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in pixels]
        for it in items:
            self._queue.put_nowait(it)
        self._wake.set()
        return _stack(asyncio.gather(*(it.future for it in items)))

    # -- the worker ----------------------------------------------------------------------------

    async def _collect(self) -> list[_Item]:
        """The first waiting image, everything queued behind it, then more while requests are
        arriving, until ``max_batch`` or ``max_wait`` after the first."""
        q = self._queue
        batch = [await q.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            if not q.empty():  # take what is already there without yielding
                batch.append(q.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if self._arriving == 0 or left <= 0:  # nothing on its way that we know of: run now
                break
            self._wake.clear()  # no await since the checks above, so no wake-up can be missed
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break
        # A request that went away (client disconnected, task cancelled) is not worth computing.
        return [it for it in batch if not it.future.done()]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        name = self.backend.name
        while True:
            batch = await self._collect()
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                x = torch.stack([it.pixels for it in batch])
                try:
                    results = list(await loop.run_in_executor(self.executor, self.backend.run, x))
                except Exception:  # noqa: BLE001 - isolate the failure to the image that causes it
                    log.exception("model %s failed on a batch of %d; retrying its images one by one", name, len(batch))
                    results = await loop.run_in_executor(self.executor, self._run_singly, x)
            except Exception as e:  # noqa: BLE001 - never let the worker die: fail this batch, serve the next
                log.exception("batch of %d for model %s failed", len(batch), name)
                results = [e] * len(batch)
            self._batch_size.observe(len(batch))
            self._inference_seconds.observe(time.perf_counter() - t0)
            for it, r in zip(batch, results):
                if it.future.done():
                    continue
                if isinstance(r, BaseException):
                    it.future.set_exception(r)
                else:
                    it.future.set_result(r)

    def _run_singly(self, x: torch.Tensor) -> list:
        """Each image alone: its logits row, or the exception it raised (runs in the executor)."""
        out = []
        for i in range(len(x)):
            try:
                out.append(self.backend.run(x[i:i + 1])[0])
            except Exception as e:  # noqa: BLE001 - handed to that image's request only
                out.append(e)
        return out


async def _stack(rows) -> np.ndarray:
    return np.stack(await rows)
