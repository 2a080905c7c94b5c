"""`visionsmith serve` itself: bind rules, names, argument errors, and one real server process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from visionsmith.serve.backends import default_name, load_backend
from visionsmith.serve.server import check_bind, is_loopback


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                        ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                        ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def test_non_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "long-random-token")
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0.*--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="token is empty"):
        check_bind("127.0.0.1", "  ")


def test_default_names():
    assert default_name(Path("runs/digits")) == "digits"
    assert default_name(Path("runs/digits/export/model.onnx")) == "digits-onnx"
    assert default_name(Path("runs/digits/export/model.int8.onnx")) == "digits-int8"
    assert default_name(Path("/x/my model.onnx")) == "my-model"


def test_bad_specs_are_clear_errors(digits_run, tmp_path):
    with pytest.raises(ValueError, match="not a run folder or an .onnx file"):
        load_backend(str(tmp_path / "missing"))
    from visionsmith.engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="not a run folder"):
        load_backend(str(tmp_path))
    from visionsmith.serve import create_app
    with pytest.raises(ValueError, match="two models are named digits"):
        create_app([load_backend(str(digits_run)), load_backend(str(digits_run))])


def test_cli_refuses_a_public_host_without_token(cli, digits_run):
    res = cli("serve", digits_run, "--host", "0.0.0.0", check=False, env={"VISIONSMITH_SERVE_TOKEN": ""})
    assert res.returncode == 2 and "refusing to serve on 0.0.0.0" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_until_stopped(digits_run, digit_pngs, tmp_path):
    """`visionsmith serve` as a user runs it: a process on a port, token from the environment."""
    port = _free_port()
    env = {**os.environ, "VISIONSMITH_SERVE_TOKEN": "tok-123", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visionsmith", "serve", f"d={digits_run}", "--port", str(port),
                             "--threads", "1", "--max-batch", "8"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        t_end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < t_end, "server did not come up"
            time.sleep(0.2)
        files = {"file": ("x.png", digit_pngs[0], "image/png")}
        assert httpx.post(f"{url}/v1/models/d:predict", files=files).status_code == 401
        r = httpx.post(f"{url}/v1/models/d:predict", files=files, headers={"Authorization": "Bearer tok-123"})
        assert r.status_code == 200 and r.json()["model"] == "d"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: exit status 0 or -SIGTERM
    assert proc.returncode in (0, -15), out
    assert "Application shutdown complete" in out
    assert "serving on http://127.0.0.1:" in out and "token required" in out
    # a run folder is served on ONNX Runtime by default (exported once into RUN/export/serve.onnx)
    assert "model d: onnx" in out and (digits_run / "export" / "serve.onnx").is_file()
