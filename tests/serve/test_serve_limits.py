"""The server under load and abuse: bytes in flight, slow clients, clients that go away.

Every test talks to the real app under a real uvicorn on a loopback port, with the connection
options `visionsmith serve` uses (``connections.uvicorn_options``), over raw sockets where the
test needs to send half a request or stop talking."""
from __future__ import annotations

import io
import logging
import re
import select
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from visionsmith.errors import UserError
from visionsmith.serve import ServeOptions, TorchBackend, create_app
from visionsmith.serve.connections import guarded_protocol, uvicorn_options

PREDICT = "/v1/models/digits:predict"


class Server:
    """``with Server(app) as port:`` the app under uvicorn in a thread, as `visionsmith serve` runs it;
    ``parser="h11"``: on uvicorn's other HTTP parser (the one it uses where httptools is missing)."""

    def __init__(self, app, parser: str = "auto"):
        import uvicorn
        options = uvicorn_options(app)
        if parser == "h11":
            from uvicorn.protocols.http.h11_impl import H11Protocol
            o = app.state.options
            options["http"] = guarded_protocol(o.header_timeout_s, o.body_timeout_s, o.max_head_bytes,
                                               app.state.metrics, base=H11Protocol)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, lifespan="on", **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        t_end = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < t_end, "uvicorn did not start"
            time.sleep(0.02)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def errors_logged():
    """Records at level ERROR or above from uvicorn and the server (tracebacks land there)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "visionsmith.serve", "")]
    for lg in loggers:
        lg.addHandler(handler)
    yield records
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 256 x 256 RGB noise PNG: ~197 kB that do not compress, a real image the model answers."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def head(port: int, path: str = PREDICT, length: int | None = None, ctype: str = "image/png",
         method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if method == "POST":
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed, as the app and the protocol's own answers are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:n]


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def metric(port: int, name: str, **labels) -> float:
    """One sample of ``/metrics`` (0 when the series does not exist yet)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


def wait_for(fn, what: str, timeout: float = 20.0):
    t_end = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < t_end, f"timed out waiting for {what}"
        time.sleep(0.05)


def inflight(port: int) -> float:
    return metric(port, "visionsmith_inflight_bytes")


def predict_status(port: int, status: int) -> float:
    return metric(port, "visionsmith_requests_total", handler="/v1/models/{name}:predict", status=status)


class GatedBackend(TorchBackend):
    """The real model; while ``gate`` is clear, a model call waits for it (``entered`` says one is waiting)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def run(self, pixels):
        if not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(60)
        return super().run(pixels)


# -- bytes in flight ----------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_bodies_over_the_inflight_budget_get_503_with_retry_after(digits_run, digit_pngs, big_png):
    n = len(big_png)
    opts = ServeOptions(max_upload_bytes=n, max_inflight_bytes=n + n // 2)  # one big upload fits, not two
    with Server(create_app([TorchBackend(digits_run, "digits")], opts)) as port:
        url = f"http://127.0.0.1:{port}"
        assert metric(port, "visionsmith_inflight_limit_bytes") == n + n // 2
        # A slow upload holds its whole Content-Length from its first byte.
        slow = connect(port)
        slow.sendall(head(port, length=n) + big_png[:1000])
        wait_for(lambda: inflight(port) == n, "the slow upload's reservation")

        r = httpx.post(f"{url}{PREDICT}", content=big_png, headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "--max-inflight-mb" in r.json()["detail"] and "retry" in r.json()["detail"]
        # A chunked body (no Content-Length) is counted as it arrives and refused once over.
        chunks = (big_png[i:i + 16384] for i in range(0, n, 16384))
        r = httpx.post(f"{url}{PREDICT}", content=chunks, headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and "--max-inflight-mb" in r.json()["detail"]
        assert inflight(port) == n  # the refused ones gave back what they took
        # A small request still fits next to the slow one.
        files = {"file": ("x.png", digit_pngs[0], "image/png")}
        assert httpx.post(f"{url}{PREDICT}", files=files).status_code == 200

        slow.sendall(big_png[1000:])
        status, _, body = read_response(slow)
        slow.close()
        assert status == 200 and b'"predictions"' in body
        assert inflight(port) == 0
        r = httpx.post(f"{url}{PREDICT}", content=big_png, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text  # the budget is free again
        assert predict_status(port, 503) == 2 and predict_status(port, 500) == 0


@pytest.mark.timeout(120)
def test_the_reservation_is_held_until_the_answer_and_given_back_on_errors(digits_run, big_png):
    n = len(big_png)
    backend = GatedBackend(digits_run, "digits")
    with Server(create_app([backend], ServeOptions(max_upload_bytes=n, max_inflight_bytes=n))) as port:
        url = f"http://127.0.0.1:{port}"
        backend.gate.clear()
        result = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{url}{PREDICT}", content=big_png, headers={"Content-Type": "image/png"}, timeout=60)))
        t.start()
        assert backend.entered.wait(30)
        # Decoded and in the model: the bytes are still held, so another upload does not fit.
        assert inflight(port) == n
        assert httpx.post(f"{url}{PREDICT}", content=big_png, headers={"Content-Type": "image/png"}).status_code == 503
        backend.gate.set()
        t.join(60)
        assert result["r"].status_code == 200
        assert inflight(port) == 0
        # A corrupt image (a 4xx after the whole body was read) gives its bytes back too.
        bad = big_png[:100] + bytes(n - 100)
        r = httpx.post(f"{url}{PREDICT}", content=bad, headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and inflight(port) == 0


def test_inflight_and_timeout_settings_are_checked(digits_run):
    backend = TorchBackend(digits_run, "digits")
    assert ServeOptions().inflight_limit() == 256 * 2**20
    assert ServeOptions(max_upload_bytes=100 * 2**20).inflight_limit() == 400 * 2**20
    assert ServeOptions(max_inflight_bytes=0).inflight_limit() is None
    with pytest.raises(UserError, match="below the upload limit"):
        create_app([backend], ServeOptions(max_upload_bytes=2**20, max_inflight_bytes=2**19))
    with pytest.raises(UserError, match="must be >= 0"):
        create_app([backend], ServeOptions(max_inflight_bytes=-1))
    with pytest.raises(UserError, match="must be > 0 seconds"):
        create_app([backend], ServeOptions(body_timeout_s=0))


# -- clients that go away -----------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_client_gone_mid_body_is_a_499_without_traceback(digits_run, digit_pngs, big_png, errors_logged):
    n = len(big_png)
    backend = GatedBackend(digits_run, "digits")
    with Server(create_app([backend], ServeOptions(max_upload_bytes=300_000))) as port:
        s = connect(port)
        s.sendall(head(port, length=n) + big_png[:5000])
        wait_for(lambda: inflight(port) == n, "the upload's reservation")
        s.close()
        wait_for(lambda: predict_status(port, 499) == 1, "the disconnect to be counted")
        assert inflight(port) == 0

        # Gone while the model works on its image: not answered, counted as 499 as well.
        backend.gate.clear()
        s = connect(port)
        s.sendall(head(port, length=len(digit_pngs[0])) + digit_pngs[0])
        assert backend.entered.wait(30)
        s.close()
        time.sleep(0.3)  # the server sees the connection closed before the model returns
        backend.gate.set()
        wait_for(lambda: predict_status(port, 499) == 2, "the second disconnect to be counted")
        assert inflight(port) == 0
        assert predict_status(port, 500) == 0 and predict_status(port, 200) == 0
        assert metric(port, "visionsmith_images_total", model="digits") == 0  # nobody was answered
    assert [r.getMessage() for r in errors_logged] == []


# -- slow clients -------------------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_a_slow_body_is_a_408_and_the_connection_is_closed(digits_run, big_png, parser):
    opts = ServeOptions(max_upload_bytes=300_000, body_timeout_s=1.0, header_timeout_s=30)
    with Server(create_app([TorchBackend(digits_run, "digits")], opts), parser) as port:
        s = connect(port)
        t0 = time.monotonic()
        s.sendall(head(port, length=len(big_png)) + big_png[:1000])
        at = 1000
        while not select.select([s], [], [], 0.1)[0] and time.monotonic() - t0 < 10:
            s.sendall(big_png[at:at + 100])  # trickling does not extend the deadline
            at += 100
        status, headers, body = read_response(s)
        took = time.monotonic() - t0
        assert status == 408 and headers["connection"] == "close" and "--body-timeout" in body.decode()
        assert 0.9 < took < 10, took
        assert closed_by_server(s, 5)
        s.close()
        assert inflight(port) == 0 and predict_status(port, 408) == 1

        # Refused before its body was read (over --max-upload-mb: 413 at once), then the rest keeps
        # trickling in: the connection is closed a body timeout after the answer.
        s = connect(port)
        s.sendall(head(port, length=400_000) + b"x" * 100)
        status, _, _ = read_response(s)
        assert status == 413
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 10:
            try:
                s.sendall(b"x" * 100)
            except OSError:
                closed = True
                break
            s.settimeout(0.1)
            try:
                closed = s.recv(1) == b""
            except TimeoutError:
                pass
            if closed:
                break
        s.close()
        assert closed and 0.9 < time.monotonic() - t0 < 10
        assert metric(port, "visionsmith_connections_closed_total", reason="body_timeout") == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_slow_heads_silent_connections_and_idle_keepalive_are_closed(digits_run, parser):
    opts = ServeOptions(header_timeout_s=1.0, keepalive_timeout_s=1.0, max_head_bytes=16384)
    with Server(create_app([TorchBackend(digits_run, "digits")], opts), parser) as port:
        # Connected, never a byte: closed, nothing sent back.
        s = connect(port)
        t0 = time.monotonic()
        assert closed_by_server(s, 10)
        assert 0.9 < time.monotonic() - t0 < 10
        s.close()

        # A head sent a line at a time: 408 at the deadline however it trickles, then closed.
        s = connect(port)
        t0 = time.monotonic()
        s.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        while not select.select([s], [], [], 0.2)[0] and time.monotonic() - t0 < 10:
            s.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s does not extend the deadline
        status, headers, _ = read_response(s)
        took = time.monotonic() - t0
        assert status == 408 and headers["connection"] == "close"
        assert 0.9 < took < 10, took
        assert closed_by_server(s, 5)
        s.close()

        # Kept alive after an answer: closed after the keep-alive timeout...
        s = connect(port)
        s.sendall(head(port, "/healthz", method="GET"))
        assert read_response(s)[0] == 200
        t0 = time.monotonic()
        assert closed_by_server(s, 10)
        assert 0.7 < time.monotonic() - t0 < 10
        s.close()
        # ... and a next request's head that stalls gets the head deadline too.
        s = connect(port)
        s.sendall(head(port, "/healthz", method="GET"))
        assert read_response(s)[0] == 200
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        status, _, _ = read_response(s)
        assert status == 408 and closed_by_server(s, 5)
        s.close()

        # A head over the size limit: 431, closed.
        s = connect(port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + 5 * (b"X-Big: " + b"a" * 4096 + b"\r\n"))
        status, _, body = read_response(s)
        assert status == 431 and b"16384" in body
        s.close()

        closed = {r: metric(port, "visionsmith_connections_closed_total", reason=r)
                  for r in ("idle_timeout", "header_timeout", "head_too_large")}
        assert closed == {"idle_timeout": 1, "header_timeout": 2, "head_too_large": 1}
        # And a client that is not slow is not hurt by any of this.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


# -- the flags ----------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_serve_flags_set_the_limits(digits_run, tmp_path):
    """`visionsmith serve` as a user runs it, with the limit flags: they reach the running server."""
    import os
    import subprocess
    import sys
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "visionsmith", "serve", f"digits={digits_run}", "--port", str(port), "--threads", "1",
           "--backend", "pytorch", "--max-upload-mb", "0.25", "--max-inflight-mb", "0.5", "--header-timeout", "1",
           "--body-timeout", "1", "--keepalive-timeout", "1"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, "the server to come up", timeout=120)
        assert metric(port, "visionsmith_inflight_limit_bytes") == 0.5 * 2**20
        s = connect(port)
        t0 = time.monotonic()
        assert closed_by_server(s, 10) and time.monotonic() - t0 < 10  # --header-timeout 1: silent, closed
        s.close()
        s = connect(port)
        s.sendall(head(port, length=1000) + b"x" * 10)
        status, _, body = read_response(s)  # --body-timeout 1
        assert status == 408 and "--body-timeout" in body.decode()
        s.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out
