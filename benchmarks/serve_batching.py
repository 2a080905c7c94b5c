"""Serving throughput and latency: dynamic batching vs one-by-one, on eager PyTorch and on ONNX
Runtime, at concurrency 1, 8 and 32.

    python benchmarks/serve_batching.py                # MobileNetV2 run folder, Fashion-MNIST 32 px
    python benchmarks/serve_batching.py --run runs/fm  # an existing run folder (the quickstart's)
    python benchmarks/serve_batching.py --quick        # smoke run: simple_cnn on digits, few requests

Four real servers run side by side, all ``python -m visionsmith serve`` subprocesses on loopback
with the same run folder and the same inference threads (``--threads``, default serve's own: all
cores but one).  Per backend (``--backend pytorch``: the checkpoint in eager PyTorch; ``--backend
onnx``: the run's graph on ONNX Runtime, serve's default, exported and parity-checked once before
the servers start and cached as ``RUN/export/serve.onnx``) one is *batched* (``--max-batch 32
--max-wait-ms 5``, the defaults) and one *unbatched* (``--max-batch 1``: every image is its own
model call).  Only one of them has traffic at a time; an idle server costs no CPU.  ``--backends``
picks fewer.

Why both backends: eager PyTorch pays a few milliseconds of Python and dispatch per call, which is
exactly what batching amortises, so batching measured against eager alone flatters batching.  The
table gives the batching gain on each backend, and one-at-a-time ONNX Runtime against batched eager
PyTorch (is the fast runtime alone worth more than batching?).

The model: a MobileNetV2 run folder at 32 px on Fashion-MNIST (the quickstart's model and
recipe, ``recipes/fashion-mnist-quick.yaml``).  Batching matters for it: on CPU a single 32 px
image leaves MobileNetV2's many small depthwise layers dominated by per-layer overhead, and a
batch of 32 costs only a few times one image.  (A model whose single-image call is already cheap
next to the HTTP work, like the 16 px ``simple_cnn`` of ``--quick``, gains little: then the
request handling is the bottleneck, not the model.)  Its weights do not change the timing, so by
default the script trains the recipe for 2 steps into a temporary run folder (``model.pretrained=
false``: no asset needed); ``--run RUN`` serves an existing run folder instead (e.g. the quickstart's).

The load: a closed loop of C clients (C = concurrency), each with one keep-alive connection
(opened before the clock starts), sending its next request as soon as its previous answer arrived.  Each request is one
Fashion-MNIST test image (28x28 grayscale PNG, 64 different ones in turn) as
``multipart/form-data``, what the web page and ``curl -F`` send; every answer must be 200 with
a prediction.  The client is a minimal asyncio HTTP/1.1 client with prebuilt requests, so it takes
as little CPU as possible from the server on the same machine (it still takes some, equally for
both servers).  First each server is warmed at every concurrency level (so at every batch size
it will run); then per concurrency level and round: W warm-up requests, then N timed requests;
throughput = N / wall time, latency = per-request send-to-last-byte time.

Rounds interleave the servers (each round of a level starts with the next server in turn), so slow
drift in the machine's load hits all alike.  Reported per concurrency: median requests/s over
the rounds, p50 and p99 latency over all timed requests of all rounds, the mean batch size the
batched servers ran (from their ``/metrics``), the batching gain per backend (batched / unbatched
requests/s, and the p99 ratio), and across backends: ONNX unbatched / PyTorch batched, ONNX
batched / PyTorch batched.  The first issue target (at concurrency 32, >= 3x the requests/s with p99
no worse than unbatched) is reported per backend.  Absolute numbers on a shared machine are noise;
the ratios measured in one run are the result.
Writes ``benchmarks/results/serve_batching.json`` (``serve_batching-quick.json`` with --quick).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
from common import env_info, loadavg, write_result  # noqa: E402  (benchmarks/common.py)

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("pytorch", "onnx")
BATCHING = ("batched", "unbatched")
BOUNDARY = "vsbenchboundary7f3a"


# -- setup ---------------------------------------------------------------------------------------

def make_run(tmp: Path, quick: bool) -> Path:
    """A run folder to serve: the recipe's model, trained for a couple of steps (timing only)."""
    import visionsmith
    if quick:
        return visionsmith.train(ROOT / "recipes" / "digits.yaml", ["train.epochs=1"], out=tmp / "run", report=False)
    return visionsmith.train(ROOT / "recipes" / "fashion-mnist-quick.yaml",
                             ["model.pretrained=false", "train.epochs=1", "train.max_steps=2", "train.ema=false"],
                             out=tmp / "run", report=False)


def sample_pngs(run: Path, n: int = 64) -> list[bytes]:
    """``n`` test images of the run's own dataset, as PNG files in memory."""
    from PIL import Image

    from visionsmith.config import load_config
    from visionsmith.data import build_datasets
    cfg = load_config(run / "config.yaml")
    ds = build_datasets(cfg.data, cfg.seed)
    split = ds.get("test") or ds["val"]
    out = []
    for img in split.images[:n]:  # uint8 [C, H, W]
        a = img.numpy()
        im = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def request_bytes(model: str, png: bytes, port: int) -> bytes:
    """One complete HTTP/1.1 request: POST the PNG as multipart/form-data (keep-alive)."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/models/{model}:predict?topk=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, max_wait_ms: float, threads: int, log: Path,
                 backend: str = "pytorch"):
    cmd = [sys.executable, "-m", "visionsmith", "serve", f"bench={run}", "--port", str(port),
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--threads", str(threads),
           "--no-access-log", "--backend", backend]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_ready(proc, port: int, log: Path, timeout: float = 180.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def http_get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks).partition(b"\r\n\r\n")[2].decode()


def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = http_get(port, "/metrics")
    vals = {}
    for line in text.splitlines():
        if line.startswith("visionsmith_batch_size_sum") or line.startswith("visionsmith_batch_size_count"):
            vals[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return vals.get("visionsmith_batch_size_sum", 0.0), vals.get("visionsmith_batch_size_count", 0.0)


# -- the load ------------------------------------------------------------------------------------

async def _client(conn, requests: list[bytes], next_index, stop: int, lat: list, errors: list) -> None:
    """Send requests over one open keep-alive connection until the shared counter reaches ``stop``."""
    reader, writer = conn
    while (i := next_index()) < stop:
        t0 = time.perf_counter()
        writer.write(requests[i % len(requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        lat.append(time.perf_counter() - t0)
        if status != 200 or b'"predictions"' not in body:
            errors.append(f"{status}: {body[:200]!r}")


async def _run(conns, requests: list[bytes], n: int) -> tuple[float, list[float], list[str]]:
    """n requests spread over the open connections (closed loop); -> (wall s, latencies, errors)."""
    counter = iter(range(10**9))
    lat: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(c, requests, lambda: next(counter), n, lat, errors) for c in conns))
    return time.perf_counter() - t0, lat, errors


async def _load(port: int, requests: list[bytes], concurrency: int, n: int, warmup: int = 0):
    """Open ``concurrency`` connections (not timed), send ``warmup`` requests, then time ``n``."""
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)))
    try:
        if warmup:
            await _run(conns, requests, warmup)
        s0 = batch_stats(port)
        wall, lat, errors = await _run(conns, requests, n)
        s1 = batch_stats(port)
    finally:
        for _, writer in conns:
            writer.close()
    return wall, lat, errors, s0, s1


def measure(port: int, requests: list[bytes], concurrency: int, n: int, warmup: int) -> dict:
    wall, lat, errors, s0, s1 = asyncio.run(_load(port, requests, concurrency, n, warmup))
    batches = s1[1] - s0[1]
    return {"requests": n, "wall_s": round(wall, 3), "req_per_s": n / wall, "lat_s": lat, "errors": errors,
            "mean_batch": (s1[0] - s0[0]) / batches if batches else None}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000.0


# -- driver --------------------------------------------------------------------------------------



def mode_name(backend: str, batching: str) -> str:
    return f"{backend}-{batching}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="serve this run folder (default: train the recipe's model for 2 steps)")
    p.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,8,32)")
    p.add_argument("--requests", type=int, default=None,
                   help="timed requests per level and round (default 500; 40 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed requests before each timed run (default 2x the concurrency, at least 20)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--max-batch", type=int, default=32, help="the batched servers' --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the batched servers' --max-wait-ms")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads of each server (default: serve's own default, all cores but one)")
    p.add_argument("--backends", default="pytorch,onnx",
                   help="comma-separated serve backends to measure (default pytorch,onnx: both, in the same run)")
    p.add_argument("--quick", action="store_true", help="smoke run: simple_cnn on digits, few requests")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result (default benchmarks/results/serve_batching.json)")
    args = p.parse_args(argv)
    defaults = dict(concurrency="1,8,32", requests=40, rounds=1) if args.quick else \
        dict(concurrency="1,8,32", requests=500, rounds=3)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or any(b not in BACKENDS for b in args.backends) or len(set(args.backends)) != len(args.backends):
        p.error(f"--backends takes a comma-separated subset of {','.join(BACKENDS)}, got {','.join(args.backends)!r}")
    if args.out is None:
        name = "serve_batching-quick.json" if args.quick else "serve_batching.json"
        args.out = ROOT / "benchmarks" / "results" / name
    if args.requests < 1 or args.rounds < 1 or min(args.levels) < 1:
        p.error("--requests, --rounds and every concurrency must be >= 1")
    return args


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    from visionsmith.serve.server import default_threads
    args.threads = args.threads or default_threads()
    modes = [mode_name(b, m) for b in args.backends for m in BATCHING]
    load_before = loadavg()
    export_info = None
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run = args.run or make_run(tmp, args.quick)
        from visionsmith.config import load_config
        cfg = load_config(run / "config.yaml")
        pngs = sample_pngs(run)
        from PIL import Image
        side = Image.open(io.BytesIO(pngs[0])).size[0]
        if "onnx" in args.backends:
            # What `visionsmith serve RUN` does on its first start, done once here so that the two ONNX
            # servers start from the same cached file instead of both exporting it.
            from visionsmith.export.cached import cached_onnx
            got = cached_onnx(run, threads=args.threads)
            print(f"onnx: {got.note}", flush=True)
            export_info = {"file": str(got.path), "reused": got.reused, "where": got.where,
                           "export_s": got.record["export_s"] if got.record else None}
        print(f"serve_batching: {cfg.model.name} at {cfg.data.image_size} px ({run}), {len(pngs)} test images as PNG; "
              f"backends {', '.join(args.backends)}; levels {args.levels}, {args.requests} timed requests x "
              f"{args.rounds} rounds, {args.threads} threads; setup {time.perf_counter() - t0:.1f} s", flush=True)
        ports = {m: free_port() for m in modes}
        procs = {}
        try:
            for m in modes:
                backend, batching = m.split("-")
                mb = args.max_batch if batching == "batched" else 1
                procs[m] = start_server(run, ports[m], mb, args.max_wait_ms, args.threads, tmp / f"{m}.log", backend)
            for m in modes:
                wait_ready(procs[m], ports[m], tmp / f"{m}.log")
                want, log = m.split("-")[0], (tmp / f"{m}.log").read_text()
                if f"model bench: {want} " not in log:  # e.g. a server that did not get the backend it was asked for
                    raise RuntimeError(f"the {m} server does not run on {want}:\n{log[-3000:]}")
            reqs = {m: [request_bytes("bench", p, ports[m]) for p in pngs] for m in modes}
            # Warm every server at every batch size it will see (oneDNN / ORT set up each new shape once).
            for m in modes:
                for c in sorted(set(args.levels)):
                    asyncio.run(_load(ports[m], reqs[m], c, 3 * c + 10))
            raw = {m: {c: [] for c in args.levels} for m in modes}
            for li, c in enumerate(args.levels):
                warm = args.warmup if args.warmup is not None else max(20, 2 * c)
                for r in range(args.rounds):
                    k = (r + li) % len(modes)  # each round starts with another server: drift hits all alike
                    for m in modes[k:] + modes[:k]:
                        res = measure(ports[m], reqs[m], c, args.requests, warm)
                        res["round"], res["load_avg"] = r, loadavg()
                        raw[m][c].append(res)
                        mb = f", mean batch {res['mean_batch']:.1f}" if res["mean_batch"] else ""
                        print(f"  c={c:<3} round {r + 1}/{args.rounds} {m:<18} {res['req_per_s']:8.1f} req/s  "
                              f"p50 {pct(res['lat_s'], 50):7.1f} ms  p99 {pct(res['lat_s'], 99):7.1f} ms"
                              f"{mb}{'  ERRORS ' + str(len(res['errors'])) if res['errors'] else ''}", flush=True)
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
    load_after = loadavg()

    table, errors = [], 0
    for c in args.levels:
        row = {"concurrency": c}
        for m in modes:
            rs = raw[m][c]
            lat = [x for res in rs for x in res["lat_s"]]
            errors += sum(len(res["errors"]) for res in rs)
            row[m] = {"req_per_s": round(statistics.median(res["req_per_s"] for res in rs), 1),
                      "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
                      "per_round_req_per_s": [round(res["req_per_s"], 1) for res in rs],
                      "mean_batch": (round(statistics.mean(res["mean_batch"] for res in rs), 2)
                                     if all(res["mean_batch"] for res in rs) else None)}
        # The batching gain on each backend: batched / unbatched requests/s, and the p99 ratio.
        row["batching_gain"] = {b: _ratio(row[mode_name(b, "batched")]["req_per_s"],
                                          row[mode_name(b, "unbatched")]["req_per_s"]) for b in args.backends}
        row["batching_p99_ratio"] = {b: _ratio(row[mode_name(b, "batched")]["p99_ms"],
                                               row[mode_name(b, "unbatched")]["p99_ms"]) for b in args.backends}
        if set(BACKENDS) <= set(args.backends):  # across backends, against the strongest eager baseline
            eager = row["pytorch-batched"]["req_per_s"]
            row["onnx_unbatched_vs_pytorch_batched"] = _ratio(row["onnx-unbatched"]["req_per_s"], eager)
            row["onnx_batched_vs_pytorch_batched"] = _ratio(row["onnx-batched"]["req_per_s"], eager)
        table.append(row)

    print(f"\n{'conc':>4}  {'server':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    for row in table:
        for m in modes:
            x = row[m]
            b = f"{x['mean_batch']:.1f}" if x["mean_batch"] else "-"
            print(f"{row['concurrency']:>4}  {m:<18}{x['req_per_s']:>9.1f}{x['p50_ms']:>9.1f}{x['p99_ms']:>9.1f}{b:>7}")
        for bk in args.backends:
            print(f"{'':>4}  {bk} batching gain: {row['batching_gain'][bk]:.2f}x req/s, "
                  f"p99 {row['batching_p99_ratio'][bk]:.2f}x")
        if "onnx_unbatched_vs_pytorch_batched" in row:
            print(f"{'':>4}  vs pytorch batched: onnx unbatched {row['onnx_unbatched_vs_pytorch_batched']:.2f}x, "
                  f"onnx batched {row['onnx_batched_vs_pytorch_batched']:.2f}x req/s")
    top = max(args.levels)
    row = next(r for r in table if r["concurrency"] == top)
    targets = {bk: bool(row["batching_gain"][bk] >= 3.0 and row["batching_p99_ratio"][bk] <= 1.0)
               for bk in args.backends}
    print(f"\nat concurrency {top}: " + "; ".join(
        f"{bk} batching {row['batching_gain'][bk]:.2f}x (p99 {row['batching_p99_ratio'][bk]:.2f}x; >= 3x with p99 "
        f"no worse: {'met' if targets[bk] else 'not met'})" for bk in args.backends) + f"; errors: {errors}")
    if "onnx_unbatched_vs_pytorch_batched" in row:
        print(f"one-at-a-time ONNX Runtime serving = {row['onnx_unbatched_vs_pytorch_batched']:.2f}x batched eager "
              f"PyTorch; batched ONNX Runtime = {row['onnx_batched_vs_pytorch_batched']:.2f}x batched eager PyTorch")
    print(f"load average: before {load_before}, after {load_after}")

    result = {
        "benchmark": "serve_batching",
        "command": " ".join(["python benchmarks/serve_batching.py", *(sys.argv[1:] if argv is None else argv)]),
        "what": "closed-loop HTTP load on `visionsmith serve` over loopback: requests/s and latency, dynamic "
                "batching vs --max-batch 1, on eager PyTorch and on ONNX Runtime; see the script's docstring",
        "settings": {"model": cfg.model.name, "image_size": cfg.data.image_size, "data": cfg.data.name,
                     "run": str(args.run) if args.run else "trained for 2 steps (timing only)",
                     "backends": args.backends, "onnx_export": export_info,
                     "levels": args.levels, "requests": args.requests, "rounds": args.rounds,
                     "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
                     "payload": f"{len(pngs)} test images, {side}x{side} PNG, as multipart/form-data",
                     "quick": args.quick},
        "table": table,
        "target_3x_at_max_concurrency_p99_not_worse": targets,
        "errors": errors,
        "rounds": {m: {str(c): [{k: v for k, v in res.items() if k != "lat_s"} for res in raw[m][c]]
                       for c in args.levels} for m in modes},
        "env": env_info(load_before, load_after),
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
