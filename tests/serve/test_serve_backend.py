"""How a run folder is served: ONNX Runtime by default, exported and parity-checked once and cached in
the run folder (``RUN/export/serve.onnx``), exported again when the checkpoint changes, PyTorch on
request, and PyTorch with a one-line reason when the ONNX path is impossible.

Each test serves its own copy of the session's tiny digits run, so the cache starts empty."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from visionsmith.errors import UserError
from visionsmith.serve import ServeOptions, TorchBackend, create_app, load_backend

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def run(digits_run, tmp_path):
    """A fresh copy of the trained digits run (no export/ folder yet)."""
    out = tmp_path / "digits"
    shutil.copytree(digits_run, out, ignore=shutil.ignore_patterns("export"))
    return out


def _probs(client, name: str, pngs: list[bytes]) -> np.ndarray:
    files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    r = client.post(f"/v1/models/{name}:predict?topk=10", files=files)
    assert r.status_code == 200, r.text
    return np.array([[{t["class"]: t["prob"] for t in p["topk"]}[str(k)] for k in range(10)]
                     for p in r.json()["predictions"]])


def _perturb_best(run) -> None:
    """Write a different best checkpoint (same classes and metadata, one weight tensor changed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = run / "checkpoints" / "best.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    key = next(k for k, v in sd.items() if v.dtype.is_floating_point and v.dim() == 4)  # a conv weight
    sd[key] = sd[key] * 1.5
    save_file(sd, str(path), metadata=meta)


def test_a_run_folder_serves_on_onnx_by_default_and_the_export_is_cached(run, digit_pngs, capsys):
    backend = load_backend(str(run))
    cached = run / "export" / "serve.onnx"
    out = capsys.readouterr().out
    assert backend.kind == "onnx" and backend.name == "digits" and cached.is_file()
    assert "model digits: exported to ONNX once for serving" in out and "checked against PyTorch on" in out
    assert "export/serve.onnx" in (run / "export" / "export.json").read_text()  # recorded like any export
    with TestClient(create_app([backend, TorchBackend(run, "eager")], ServeOptions(max_wait_ms=20))) as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert models["digits"]["kind"] == "onnx" and models["eager"]["kind"] == "pytorch"
        assert models["digits"]["run"] == str(run) and models["digits"]["source"] == str(cached)
        onnx_p, torch_p = _probs(c, "digits", digit_pngs[:8]), _probs(c, "eager", digit_pngs[:8])
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)  # the parity bound is 1e-3 on logits
    assert (onnx_p.argmax(1) == torch_p.argmax(1)).all()

    stamp = cached.stat().st_mtime_ns
    again = load_backend(str(run))  # a second start: the file is reused, not written again
    out = capsys.readouterr().out
    assert again.kind == "onnx" and cached.stat().st_mtime_ns == stamp
    assert f"model digits: reusing {cached}" in out and "exported to ONNX once" not in out


def test_a_changed_checkpoint_is_exported_again(run, digit_pngs, capsys):
    from visionsmith.export.cached import META_ENTRY, cache_key, is_up_to_date
    from visionsmith.export.runtime import read_metadata
    load_backend(str(run))
    cached = run / "export" / "serve.onnx"
    old_key = read_metadata(cached)[META_ENTRY]
    assert old_key == cache_key(run)
    # The same weights under another visionsmith (or torch, opset, bound) version are stale too.
    assert not is_up_to_date(cached, {**old_key, "visionsmith": "0.0.0-other"})
    _perturb_best(run)
    capsys.readouterr()
    backend = load_backend(str(run))
    assert "exported to ONNX once for serving" in capsys.readouterr().out
    new_key = read_metadata(cached)[META_ENTRY]
    assert new_key["weights_sha256"] != old_key["weights_sha256"] and new_key == cache_key(run)
    with TestClient(create_app([backend, TorchBackend(run, "eager")])) as c:  # it serves the new weights
        np.testing.assert_allclose(_probs(c, "digits", digit_pngs[:4]), _probs(c, "eager", digit_pngs[:4]),
                                   atol=1e-4)


def test_backend_pytorch_serves_the_checkpoint_and_exports_nothing(run, capsys):
    backend = load_backend(f"d={run}", backend="pytorch")
    assert backend.kind == "pytorch" and backend.describe()["kind"] == "pytorch"
    assert not (run / "export").exists() and capsys.readouterr().out == ""
    with pytest.raises(UserError, match="--backend must be one of auto, onnx, pytorch"):
        load_backend(str(run), backend="tensorrt")


def test_a_failed_parity_check_falls_back_to_pytorch_with_one_line(run, capsys):
    backend = load_backend(str(run), parity_atol=-1.0)  # a bound nothing can meet
    out = capsys.readouterr().out
    assert backend.kind == "pytorch" and not (run / "export" / "serve.onnx").exists()
    (line,) = out.strip().splitlines()
    assert line.startswith("model digits: serving with PyTorch, not ONNX Runtime: fp32 ONNX does not match PyTorch")
    assert "Traceback" not in out
    assert backend.describe()["backend_note"].startswith("ONNX Runtime not used: fp32 ONNX does not match")
    with pytest.raises(UserError, match=r"--backend onnx: .* cannot be served on ONNX Runtime: fp32 ONNX does not"):
        load_backend(str(run), backend="onnx", parity_atol=-1.0)


def test_without_onnxruntime_auto_serves_pytorch_and_onnx_is_an_error(run, digit_pngs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails, as when not installed
    backend = load_backend(str(run))
    out = capsys.readouterr().out
    assert backend.kind == "pytorch"
    assert out.strip() == ("model digits: serving with PyTorch, not ONNX Runtime: onnxruntime is not installed "
                           "(pip install onnx onnxruntime)")
    with TestClient(create_app([backend])) as c:
        assert c.get("/v1/models/digits").json()["backend_note"].endswith("onnxruntime is not installed "
                                                                         "(pip install onnx onnxruntime)")
        assert _probs(c, "digits", digit_pngs[:2]).shape == (2, 10)
    with pytest.raises(UserError, match="--backend onnx: .*onnxruntime is not installed"):
        load_backend(str(run), backend="onnx")


def test_a_run_folder_that_cannot_be_written_still_serves_on_onnx(run, tmp_path, monkeypatch, capsys):
    """Cached under $VISIONSMITH_HOME/serve/ when the run folder cannot be written; exported to a
    temporary file (removed once loaded) when that cannot be written either."""
    home = tmp_path / "home"
    monkeypatch.setenv("VISIONSMITH_HOME", str(home))
    if os.geteuid() == 0:  # root writes through any mode bits: make RUN/export impossible to create instead
        (run / "export").write_text("not a folder")
    else:
        run.chmod(0o555)
    try:
        backend = load_backend(str(run))
        out = capsys.readouterr().out
        (cached,) = (home / "serve").glob("digits-*.onnx")
        assert backend.kind == "onnx" and backend.source == str(cached)
        assert f"{run} cannot be written, so the cache is in {home / 'serve'}" in out
        stamp = cached.stat().st_mtime_ns
        assert load_backend(str(run)).kind == "onnx" and cached.stat().st_mtime_ns == stamp
        assert f"reusing {cached}" in capsys.readouterr().out

        # No writable home either (a path below the unwritable run folder): a temporary export.
        monkeypatch.setenv("VISIONSMITH_HOME", str(run / "export" / "home" if os.geteuid() == 0 else run / "home"))
        before = set(os.listdir(tempfile.gettempdir()))
        backend = load_backend(str(run))
        out = capsys.readouterr().out
        assert backend.kind == "onnx" and "not cached, it is exported again on every start" in out
        assert "exported to a temporary file" in backend.source
        leftover = set(os.listdir(tempfile.gettempdir())) - before
        assert not [n for n in leftover if n.startswith("visionsmith-serve-")]
        assert backend.run(torch.rand(2, 1, 16, 16)).shape == (2, 10)  # the session outlives its file
    finally:
        run.chmod(0o755)


def test_a_segmentation_run_serves_on_onnx_with_the_masks_of_pytorch(seg_run, scene_pngs, tmp_path):
    run = tmp_path / "seg"
    shutil.copytree(seg_run, run, ignore=shutil.ignore_patterns("export"))
    backend = load_backend(f"seg={run}")
    assert backend.kind == "onnx" and backend.task == "segmentation"
    with TestClient(create_app([backend, TorchBackend(run, "eager")], ServeOptions(max_images=4))) as c:
        files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(scene_pngs)]
        a = c.post("/v1/models/seg:predict", files=files).json()["predictions"]
        b = c.post("/v1/models/eager:predict", files=files).json()["predictions"]
    for pa, pb in zip(a, b):
        assert (pa["width"], pa["height"]) == (pb["width"], pb["height"])
        assert pa["fractions"] == pytest.approx(pb["fractions"], abs=2e-3)  # argmax may flip on near-ties only


def test_cli_backend_flag(cli, run):
    res = cli("serve", run, "--backend", "tensorrt", check=False)
    assert res.returncode == 2 and "--backend: invalid choice: 'tensorrt'" in res.stderr
    res = cli("serve", "--help")
    assert "--backend {auto,onnx,pytorch}" in res.stdout
