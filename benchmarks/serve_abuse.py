"""The server under a flood of large uploads: peak memory with the in-flight limit on and off, and
the latency of normal small requests sent meanwhile.

    python benchmarks/serve_abuse.py                # 80 concurrent 15 MB uploads, limit on vs off
    python benchmarks/serve_abuse.py --quick        # smoke run: 20 concurrent 3 MB uploads, small limit

Two real servers, ``python -m visionsmith serve`` subprocesses on loopback with the same run folder,
run one after the other (never at the same time, so each has the machine's memory and cores):
*on* with the default ``--max-inflight-mb`` (256; ``--limit-mb`` sets another) and *off* with
``--max-inflight-mb 0`` (no limit: every upload is read and decoded as soon as it arrives).

The model is the one ``serve_batching.py`` serves (MobileNetV2 on Fashion-MNIST at 32 px, trained
for 2 steps: its weights do not matter here; ``--run RUN`` serves an existing run folder).

Per server:
1. idle: S small clients (keep-alive connections, closed loop) send N small requests (a 28x28 PNG
   each, as multipart/form-data): their p50/p99 is the baseline;
2. flood: C clients each upload U large images (an RGB noise PNG of ``--upload-mb`` MB, which does
   not compress, as the raw body with a Content-Length), all starting at once, one connection per
   upload; a client that gets 503 waits for Retry-After and sends again, as a well-behaved client
   does (it stops sending its body when the answer comes first).  Meanwhile the S small clients keep
   sending, and every small answer must be a 200;
3. the server's peak RSS over the flood: the kernel's high-water mark (``VmHWM``, reset through
   ``/proc/PID/clear_refs`` just before the flood) and the highest ``VmRSS`` sampled every 10 ms;
   its RSS before the flood is reported too.

Reported per server: peak and idle RSS, the large uploads' 200s, 503s (each retried) and other
answers, the flood's wall time, and the small requests' p50/p99 during the flood (next to idle) and
their errors.  The issue asks for memory to stay under a stated figure with the limit on, and for
the small requests to keep being answered.  Absolute times on a shared machine are noise; memory
figures are not.  Writes ``benchmarks/results/serve_abuse.json`` (``serve_abuse-quick.json`` with --quick).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
from common import env_info, loadavg, write_result  # noqa: E402  (benchmarks/common.py)
# The same model, test images, ports and readiness check as the batching benchmark.
from serve_batching import free_port, http_get, make_run, request_bytes, sample_pngs, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("on", "off")
CHUNK = 256 * 1024  # a large body goes out in pieces, so the client never buffers a whole one per connection


# -- the servers ---------------------------------------------------------------------------------

def start_server(run: Path, port: int, mode: str, args, log: Path):
    cmd = [sys.executable, "-m", "visionsmith", "serve", f"bench={run}", "--port", str(port),
           "--threads", str(args.threads), "--max-upload-mb", str(args.max_upload_mb), "--no-access-log"]
    if args.backend:
        cmd += ["--backend", args.backend]
    if mode == "off":
        cmd += ["--max-inflight-mb", "0"]
    elif args.limit_mb is not None:
        cmd += ["--max-inflight-mb", str(args.limit_mb)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of ``pid`` (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """The highest VmRSS of ``pid``, read every ``every`` seconds until ``stop()``."""

    def __init__(self, pid: int, every: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self._done = pid, every, 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def server_metrics(port: int) -> dict[str, float]:
    """The predict route's answers by status, and the in-flight gauge, from ``/metrics``."""
    out = {}
    for line in http_get(port, "/metrics").splitlines():
        if line.startswith("visionsmith_requests_total{") and 'handler="/v1/models/{name}:predict"' in line:
            status = line.split('status="')[1].split('"')[0]
            out[f"status_{status}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("visionsmith_inflight_bytes ", "visionsmith_inflight_limit_bytes ")):
            out[line.split(" ")[0]] = float(line.rsplit(" ", 1)[1])
    return out


# -- the clients ---------------------------------------------------------------------------------

async def _read_response(reader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def _small_client(port: int, requests: list[bytes], counter, stop, lat: list, errors: list) -> None:
    """Small requests over one keep-alive connection until ``stop()`` says so."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop():
            i = next(counter)
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, _, body = await _read_response(reader)
            lat.append(time.perf_counter() - t0)
            if status != 200 or b'"predictions"' not in body:
                errors.append(f"{status}: {body[:200]!r}")
    finally:
        writer.close()


async def _upload(port: int, head: bytes, body: memoryview) -> tuple[int, dict[str, str]]:
    """One large upload on its own connection; stops sending when the answer comes first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(_read_response(reader))
    try:
        writer.write(head)
        for at in range(0, len(body), CHUNK):
            if answer.done():
                break
            writer.write(body[at:at + CHUNK])
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed; the answer is in the reader
    try:
        status, headers, _ = await answer
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        status, headers = -1, {"error": repr(e)}
    writer.close()
    return status, headers


async def _uploader(port: int, head: bytes, body: memoryview, uploads: int, tally: dict, errors: list) -> None:
    done = 0
    while done < uploads:
        status, headers = await _upload(port, head, body)
        tally[status] = tally.get(status, 0) + 1
        if status not in (200, 503):
            errors.append(headers.get("error") or f"status {status}")
        if status == 503:
            await asyncio.sleep(float(headers.get("retry-after", "1")))
        else:
            done += 1


async def _idle(port: int, small: list[bytes], clients: int, n: int) -> list[float]:
    counter, lat, errors = iter(range(10**9)), [], []
    stop = lambda: len(lat) >= n  # noqa: E731
    await asyncio.gather(*(_small_client(port, small, counter, stop, lat, errors) for _ in range(clients)))
    if errors:
        raise RuntimeError(f"idle small requests failed: {errors[:3]}")
    return lat


async def _flood(port: int, small: list[bytes], big_head: bytes, big: bytes, args) -> dict:
    counter, lat, errors, tally, upload_errors = iter(range(10**9)), [], [], {}, []
    finished = asyncio.Event()
    body = memoryview(big)
    t0 = time.perf_counter()
    smalls = [asyncio.ensure_future(_small_client(port, small, counter, finished.is_set, lat, errors))
              for _ in range(args.small_clients)]
    await asyncio.gather(*(_uploader(port, big_head, body, args.uploads, tally, upload_errors)
                           for _ in range(args.concurrency)))
    wall = time.perf_counter() - t0
    finished.set()
    await asyncio.gather(*smalls)
    return {"wall_s": wall, "small_lat_s": lat, "small_errors": errors, "uploads": tally,
            "upload_errors": upload_errors}


def noise_png(mb: float) -> tuple[bytes, int]:
    """An RGB noise PNG of about ``mb`` MB (noise does not compress) and its side in pixels."""
    from PIL import Image
    side = int((mb * 2**20 / 3) ** 0.5)
    a = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), side


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(xs), q)) * 1000.0, 2) if xs else None


# -- driver --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="serve this run folder (default: train the recipe's model for 2 steps)")
    p.add_argument("--concurrency", type=int, default=None, help="clients uploading large images at once (default 80)")
    p.add_argument("--upload-mb", type=float, default=None, help="size of each large upload (default 15)")
    p.add_argument("--uploads", type=int, default=1, help="large uploads each client gets answered (default 1)")
    p.add_argument("--limit-mb", type=float, default=None,
                   help="the 'on' server's --max-inflight-mb (default: serve's own default; 16 with --quick)")
    p.add_argument("--max-upload-mb", type=float, default=None,
                   help="both servers' --max-upload-mb (default 16; 4 with --quick)")
    p.add_argument("--small-clients", type=int, default=4, help="clients sending small requests (default 4)")
    p.add_argument("--idle-requests", type=int, default=None, help="small requests for the idle baseline (default 300)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each server (default: serve's own default, all cores but one)")
    p.add_argument("--backend", default=None, help="the servers' --backend (default: serve's own default)")
    p.add_argument("--quick", action="store_true", help="smoke run: simple_cnn on digits, 20 uploads of 3 MB")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default benchmarks/results/serve_abuse.json)")
    args = p.parse_args(argv)
    defaults = dict(concurrency=20, upload_mb=3.0, limit_mb=16.0, max_upload_mb=4.0, idle_requests=100) \
        if args.quick else dict(concurrency=80, upload_mb=15.0, max_upload_mb=16.0, idle_requests=300)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.upload_mb > args.max_upload_mb:
        p.error("--upload-mb must be <= --max-upload-mb")
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("serve_abuse-quick.json" if args.quick else "serve_abuse.json")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from visionsmith.serve.server import default_threads
    args.threads = args.threads or default_threads()
    load_before = loadavg()
    big, side = noise_png(args.upload_mb)
    results = {}
    with tempfile.TemporaryDirectory(prefix="serve-abuse-") as tmp:
        tmp = Path(tmp)
        run = args.run or make_run(tmp, args.quick)
        from visionsmith.config import load_config
        cfg = load_config(run / "config.yaml")
        pngs = sample_pngs(run)
        print(f"serve_abuse: {cfg.model.name} at {cfg.data.image_size} px ({run}); {args.concurrency} clients x "
              f"{args.uploads} upload(s) of {len(big) / 2**20:.1f} MB ({side}x{side} RGB noise PNG), "
              f"{args.small_clients} small clients; {args.threads} threads", flush=True)
        # A first start does the one-time work (serve's ONNX export of a run folder is cached in it), so
        # neither measured server carries its memory.
        port = free_port()
        proc = start_server(run, port, "on", args, tmp / "prime.log")
        try:
            wait_ready(proc, port, tmp / "prime.log", timeout=600)
        finally:
            proc.terminate()
            proc.wait(30)
        for mode in MODES:
            port = free_port()
            log = tmp / f"{mode}.log"
            proc = start_server(run, port, mode, args, log)
            try:
                wait_ready(proc, port, log)
                small = [request_bytes("bench", p, port) for p in pngs]
                # No "Connection: close": after an early answer (503) uvicorn would close at once while
                # the body is still coming, and the kernel's reset could destroy the answer unread.
                big_head = (f"POST /v1/models/bench:predict?topk=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                            f"Content-Type: image/png\r\nContent-Length: {len(big)}\r\n\r\n").encode()
                asyncio.run(_idle(port, small, args.small_clients, 50))  # warm-up
                idle = asyncio.run(_idle(port, small, args.small_clients, args.idle_requests))
                rss_idle = proc_status(proc.pid)["VmRSS"]
                hwm_reset = reset_peak(proc.pid)
                sampler = RssSampler(proc.pid)
                sampler.start()
                flood = asyncio.run(_flood(port, small, big_head, big, args))
                sampled = sampler.stop()
                status = proc_status(proc.pid)
                metrics = server_metrics(port)
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            peak = max(sampled, status["VmHWM"]) if hwm_reset else sampled
            up = flood["uploads"]
            res = {"peak_rss_mb": round(peak / 2**20, 1), "growth_mb": round((peak - rss_idle) / 2**20, 1),
                   "peak_rss_sampled_mb": round(sampled / 2**20, 1),
                   "peak_from_vmhwm": hwm_reset, "idle_rss_mb": round(rss_idle / 2**20, 1),
                   "uploads_200": up.get(200, 0), "uploads_503": up.get(503, 0),
                   "uploads_other": {str(k): v for k, v in up.items() if k not in (200, 503)},
                   "upload_error_examples": flood["upload_errors"][:3],
                   "flood_wall_s": round(flood["wall_s"], 2),
                   "small_requests": len(flood["small_lat_s"]), "small_errors": len(flood["small_errors"]),
                   "small_error_examples": flood["small_errors"][:3],
                   "small_p50_ms": pct(flood["small_lat_s"], 50), "small_p99_ms": pct(flood["small_lat_s"], 99),
                   "idle_p50_ms": pct(idle, 50), "idle_p99_ms": pct(idle, 99),
                   "server_metrics": metrics, "load_avg": loadavg()}
            results[mode] = res
            print(f"  {mode:<3}: peak RSS {res['peak_rss_mb']:7.1f} MB (idle {res['idle_rss_mb']:.1f}, "
                  f"+{res['growth_mb']:.1f}); uploads "
                  f"200 x{res['uploads_200']}, 503 x{res['uploads_503']}, other {res['uploads_other'] or 0}; "
                  f"{res['flood_wall_s']:.1f} s; small p99 {res['small_p99_ms']} ms (idle {res['idle_p99_ms']}), "
                  f"{res['small_errors']} errors of {res['small_requests']}", flush=True)
    load_after = loadavg()

    limit = results["on"]["server_metrics"].get("visionsmith_inflight_limit_bytes", 0) / 2**20
    print(f"\n{'limit':<12}{'peak RSS MB':>12}{'idle RSS MB':>12}{'growth':>8}{'200':>6}{'503':>6}{'flood s':>9}"
          f"{'small p50':>11}{'small p99':>11}{'idle p99':>10}{'small err':>10}")
    for mode in MODES:
        r = results[mode]
        name = f"on ({limit:g} MB)" if mode == "on" else "off"
        print(f"{name:<12}{r['peak_rss_mb']:>12.1f}{r['idle_rss_mb']:>12.1f}{r['growth_mb']:>8.1f}"
              f"{r['uploads_200']:>6}{r['uploads_503']:>6}"
              f"{r['flood_wall_s']:>9.1f}{r['small_p50_ms'] or 0:>11.1f}{r['small_p99_ms'] or 0:>11.1f}"
              f"{r['idle_p99_ms'] or 0:>10.1f}{r['small_errors']:>10}")
    on, off = results["on"], results["off"]
    print(f"\npeak RSS with the limit: {on['peak_rss_mb']:.0f} MB vs {off['peak_rss_mb']:.0f} MB without "
          f"({on['peak_rss_mb'] / off['peak_rss_mb']:.2f}x; growth over idle {on['growth_mb']:.0f} vs "
          f"{off['growth_mb']:.0f} MB); load average before {load_before}, after {load_after}")

    result = {
        "benchmark": "serve_abuse",
        "command": " ".join(["python benchmarks/serve_abuse.py", *(sys.argv[1:] if argv is None else argv)]),
        "what": "peak RSS of `visionsmith serve` under concurrent large uploads with the in-flight byte limit on and "
                "off, and the latency of small requests sent meanwhile; see the script's docstring",
        "settings": {"model": cfg.model.name, "image_size": cfg.data.image_size, "data": cfg.data.name,
                     "run": str(args.run) if args.run else "trained for 2 steps (timing only)",
                     "concurrency": args.concurrency, "uploads_per_client": args.uploads,
                     "upload_bytes": len(big), "upload_image": f"{side}x{side} RGB noise PNG",
                     "limit_mb": limit, "max_upload_mb": args.max_upload_mb, "small_clients": args.small_clients,
                     "idle_requests": args.idle_requests, "threads": args.threads, "backend": args.backend,
                     "quick": args.quick},
        "results": results,
        "env": env_info(load_before, load_after),
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
