"""Dynamic batching through the real app, in-process (httpx over ASGI, the app's lifespan running):
concurrent requests share model calls and get the same answers as alone; bad requests and a
failing image never disturb the others; a lone request is not delayed; a full queue is a 503.

Two tests use a real checkpoint backend with one deliberate behaviour added (it fails on a white
image, or it blocks until released), because a trained model never fails on demand."""
from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest

from visionsmith.serve import ServeOptions, TorchBackend, create_app

PREDICT = "/v1/models/digits:predict"


async def _with_app(app, fn):
    """Run ``fn(client)`` against ``app`` with its lifespan (batchers, thread pools) started."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await fn(c)


def run_app(app, fn):
    return asyncio.run(_with_app(app, fn))


def _post(c, data: bytes, name="x.png"):
    return c.post(PREDICT, files={"file": (name, data, "image/png")}, params={"topk": 10})


def _probs(resp) -> dict:
    return {t["class"]: t["prob"] for t in resp.json()["predictions"][0]["topk"]}


def _batches(text: str) -> tuple[float, float]:
    s = float(re.search(r'visionsmith_batch_size_sum\{model="digits"\} (\S+)', text).group(1))
    n = float(re.search(r'visionsmith_batch_size_count\{model="digits"\} (\S+)', text).group(1))
    return s, n


def test_concurrent_requests_are_batched_with_the_same_answers(digits_run, digit_pngs):
    app = create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_batch=32, max_wait_ms=50))

    async def go(c):
        alone = [_probs(await _post(c, p)) for p in digit_pngs]  # one at a time: batches of 1
        s0, n0 = _batches((await c.get("/metrics")).text)
        together = await asyncio.gather(*(_post(c, p) for p in digit_pngs * 2))
        s1, n1 = _batches((await c.get("/metrics")).text)
        return alone, together, (s0, n0), (s1, n1)

    alone, together, (s0, n0), (s1, n1) = run_app(app, go)
    assert (s0, n0) == (len(digit_pngs), len(digit_pngs))  # sequential: every batch had one image
    assert all(r.status_code == 200 for r in together)
    assert s1 - s0 == 2 * len(digit_pngs)
    assert n1 - n0 < s1 - s0, "32 concurrent requests ran as 32 separate model calls"
    for r, want in zip(together, alone * 2):
        got = _probs(r)
        assert max(got, key=got.get) == max(want, key=want.get)
        np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)], atol=1e-5)


def test_bad_requests_do_not_disturb_good_ones_in_the_same_burst(digits_run, digit_pngs, make_png):
    app = create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_batch=32, max_wait_ms=50,
                                                                         max_pixels=100_000))
    bad = [b"", b"not an image at all", make_png(np.zeros((400, 400), np.uint8)), digit_pngs[0][:-40]]

    async def go(c):
        alone = [_probs(await _post(c, p)) for p in digit_pngs]
        mixed = [p for pair in zip(digit_pngs, bad * 4) for p in pair]  # good, bad, good, bad, ...
        rs = await asyncio.gather(*(_post(c, p) for p in mixed))
        return alone, rs, (await c.get("/metrics")).text

    alone, rs, metrics = run_app(app, go)
    good, worse = rs[0::2], rs[1::2]
    assert [r.status_code for r in worse] == [400, 415, 413, 400] * 4
    assert all(r.status_code == 200 for r in good)
    for r, want in zip(good, alone):
        np.testing.assert_allclose(list(_probs(r).values()), [want[k] for k in _probs(r)], atol=1e-5)
    assert re.search(r'visionsmith_images_total\{model="digits"\} 32\.0', metrics)  # 16 alone + 16 in the burst


class FailsOnWhite(TorchBackend):
    """A real checkpoint backend that raises whenever a batch holds an all-white image."""

    def run(self, pixels):
        if bool((pixels.flatten(1) == 1).all(1).any()):
            raise RuntimeError("cannot classify a white image")
        return super().run(pixels)


def test_a_failing_image_fails_only_its_own_request(digits_run, digit_pngs, make_png):
    app = create_app([FailsOnWhite(digits_run, "digits")], ServeOptions(max_batch=32, max_wait_ms=50))
    white = make_png(np.full((8, 8), 255, np.uint8))

    async def go(c):
        batch = digit_pngs[:8] + [white] + digit_pngs[8:]
        return await asyncio.gather(*(_post(c, p) for p in batch)), (await c.get("/metrics")).text

    rs, metrics = run_app(app, go)
    codes = [r.status_code for r in rs]
    assert codes == [200] * 8 + [500] + [200] * 8
    assert 'status="500"} 1.0' in metrics


def test_a_lone_request_does_not_wait_for_company(digits_run, digit_pngs):
    """max_wait_ms is a cap for requests already arriving, not a delay added to every request."""
    app = create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_batch=32, max_wait_ms=3000))

    async def go(c):
        await _post(c, digit_pngs[0])
        t0 = time.perf_counter()
        r = await _post(c, digit_pngs[1])
        return r, time.perf_counter() - t0

    r, secs = run_app(app, go)
    assert r.status_code == 200 and secs < 1.5, f"a lone request took {secs:.2f} s with max_wait_ms=3000"


def test_max_batch_one_serves_one_by_one(digits_run, digit_pngs):
    app = create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_batch=1, max_wait_ms=50))

    async def go(c):
        rs = await asyncio.gather(*(_post(c, p) for p in digit_pngs))
        return rs, (await c.get("/metrics")).text

    rs, metrics = run_app(app, go)
    assert all(r.status_code == 200 for r in rs)
    s, n = _batches(metrics)
    assert s == n == len(digit_pngs)


class Blocking(TorchBackend):
    """A real checkpoint backend whose model calls wait for ``release`` (after the warm-up call)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls, self.entered, self.release = 0, threading.Event(), threading.Event()

    def run(self, pixels):
        self.calls += 1
        if self.calls > 1:
            self.entered.set()
            self.release.wait(30)
        return super().run(pixels)


def test_a_full_queue_is_a_503_and_the_queued_requests_still_finish(digits_run, digit_pngs):
    backend = Blocking(digits_run, "digits")
    app = create_app([backend], ServeOptions(max_batch=1, max_queue=4, max_images=4))

    async def go(c):
        first = asyncio.ensure_future(_post(c, digit_pngs[0]))
        while not backend.entered.is_set():  # the model is now busy with `first`
            await asyncio.sleep(0.01)
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(digit_pngs[1:5])]
        queued = asyncio.ensure_future(c.post(PREDICT, files=files))  # 4 images: the queue is full
        while app.state.batchers["digits"]._queue.qsize() < 4:
            await asyncio.sleep(0.01)
        busy = await _post(c, digit_pngs[5])
        backend.release.set()
        return busy, await first, await queued

    busy, first, queued = run_app(app, go)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "retry later" in busy.json()["detail"]
    assert first.status_code == 200 and queued.status_code == 200 and len(queued.json()["predictions"]) == 4


def test_batcher_rejects_bad_settings(digits_run):
    with pytest.raises(ValueError, match="max_queue"):
        create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_queue=2, max_images=4))
    with pytest.raises(ValueError, match="max_batch"):
        create_app([TorchBackend(digits_run, "digits")], ServeOptions(max_batch=0))
