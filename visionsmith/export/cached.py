"""A run's ONNX graph for serving: exported and parity-checked once, then reused until the run changes.

    got = cached_onnx("runs/fm")     # first time: export_onnx(...) -> runs/fm/export/serve.onnx
    got = cached_onnx("runs/fm")     # again: the same file, not exported again (got.reused)

The file is an ordinary ``visionsmith export`` fp32 file (same exporter, same parity check against
PyTorch on held-out images, same metadata), with one more metadata entry, ``serve_cache``: the key
it was made for.  The key is the sha256 of the weights file that would be served (``best``, else
``last``) and of ``config.yaml`` (which builds the model and holds the task's decoding settings), the
visionsmith and torch versions (the exporter), the cache format, the opset and the fp32 parity bound.
Any change re-exports; a file whose key matches is used as it is (it passed its check when written).

Where (``where``):
- ``run``: ``RUN/export/serve.onnx``, recorded in ``RUN/export/export.json`` like any export;
- ``home``: when the run folder cannot be written (a read-only mount, another user's folder):
  ``$VISIONSMITH_HOME/serve/<run name>-<key digest>.onnx`` (default ``~/.cache/visionsmith``);
- ``temporary``: when neither can be written, a temporary file that the caller removes once loaded
  (exported again on every start).

Why a separate file from ``model.onnx``: that one is whatever the user last exported (maybe with
another opset or ``--out``) and carries no key, so it cannot be known to match the weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..assets import sha256_file
from .onnx import DEFAULT_CHECK, DEFAULT_OPSET, export_onnx
from .parity import FP32_ATOL

CACHE_FORMAT = 1         # bump when what goes into the served graph changes in a way the key does not see
SERVE_FILE = "serve.onnx"
META_ENTRY = "serve_cache"  # the key, inside the file's ``visionsmith`` metadata


@dataclass
class CachedOnnx:
    """``path``: the checked ONNX file; ``reused``: found up to date (no export this time);
    ``where``: "run", "home" or "temporary" (see the module docstring); ``note``: one line saying what
    happened, for the server's log; ``record``: the export record when exported now (else None)."""
    path: Path
    reused: bool
    where: str
    note: str
    record: dict | None = None

    @property
    def temporary(self) -> bool:
        return self.where == "temporary"


def weights_file(run_dir: str | Path) -> Path:
    """The weights file ``load_trained(run_dir)`` loads: ``checkpoints/best.safetensors``, else ``last``.
    Raises ``CheckpointError`` for a folder that is no run or has no weights yet."""
    from ..engine.checkpoint import CheckpointError
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no config.yaml); pass the folder that "
                              "`visionsmith train` printed")
    for name in ("best", "last"):
        path = run_dir / "checkpoints" / f"{name}.safetensors"
        if path.is_file():
            return path
    raise CheckpointError(f"{run_dir} has no weights yet (no checkpoints/best.safetensors or "
                          "last.safetensors): the run stopped before its first epoch ended")


def cache_key(run_dir: str | Path, opset: int = DEFAULT_OPSET, atol: float = FP32_ATOL) -> dict:
    """What a cached file must have been made from (see the module docstring)."""
    import torch

    from .. import __version__
    run_dir = Path(run_dir)
    weights = weights_file(run_dir)
    return {"format": CACHE_FORMAT, "weights": weights.name, "weights_sha256": sha256_file(weights),
            "config_sha256": sha256_file(run_dir / "config.yaml"), "visionsmith": __version__,
            "torch": torch.__version__, "opset": int(opset), "atol": float(atol)}


def is_up_to_date(path: Path, key: dict) -> bool:
    """True when ``path`` is a readable visionsmith ONNX file made for ``key``."""
    from .runtime import read_metadata
    if not path.is_file():
        return False
    try:
        return read_metadata(path).get(META_ENTRY) == json.loads(json.dumps(key))
    except Exception:  # noqa: BLE001 - unreadable, truncated, not ours: export it again
        return False


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (made if missing): tried, not guessed from the mode
    bits, which say nothing for root, ACLs or read-only mounts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
        return True
    except OSError:
        return False


def home_path(run_dir: Path, key: dict) -> Path:
    """``$VISIONSMITH_HOME/serve/<run name>-<key digest>.onnx``: content-addressed, so copies of one run
    share a file and different runs never do."""
    from ..assets import home
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-") or "run"
    return home() / "serve" / f"{name}-{digest}.onnx"


def cached_onnx(run_dir: str | Path, threads: int | None = None, opset: int = DEFAULT_OPSET,
                atol: float = FP32_ATOL, check: int = DEFAULT_CHECK) -> CachedOnnx:
    """The run's fp32 ONNX graph for serving: an up-to-date cached file, or a fresh ``export_onnx``
    (parity bound ``atol`` on ``check`` held-out images) written to the first writable place.

    Raises what ``export_onnx`` raises (``ExportError``, ``ParityError``, ``DataError``,
    ``CheckpointError``, ``ImportError`` without onnx/onnxruntime); nothing is cached then.
    """
    run_dir = Path(run_dir)
    key = cache_key(run_dir, opset, atol)
    in_run = run_dir / "export" / SERVE_FILE
    in_home = home_path(run_dir, key)
    for path, where in ((in_run, "run"), (in_home, "home")):
        if is_up_to_date(path, key):
            return CachedOnnx(path, True, where, f"reusing {path} (exported and parity-checked for "
                                                 f"{key['weights']} as it is now)")
    if _writable(in_run.parent):
        out, where, note = in_run, "run", ""
    elif _writable(in_home.parent):
        out, where = in_home, "home"
        note = f" ({run_dir} cannot be written, so the cache is in {in_home.parent})"
    else:
        out = Path(tempfile.mkdtemp(prefix="visionsmith-serve-")) / SERVE_FILE
        where = "temporary"
        note = (f" (neither {run_dir} nor {in_home.parent} can be written: not cached, it is exported again "
                "on every start)")
    try:
        res = export_onnx(run_dir, opset=opset, out=out, check=check, atol=atol, threads=threads,
                          extra_meta={META_ENTRY: key}, record=where == "run")
    except BaseException:
        if where == "temporary":
            _remove_temporary(out)
        raise
    fp = res.record["parity"]["fp32"]
    diff = f"max |logit difference| {fp['max_abs_diff']:.1e}, bound {atol:.0e}"
    return CachedOnnx(res.path, False, where,
                      f"exported to ONNX once for serving in {res.record['export_s']:.1f} s: {res.path}, "
                      f"checked against PyTorch on {res.record['parity']['images']} ({diff}){note}",
                      res.record)


def _remove_temporary(path: Path) -> None:
    """Remove a ``temporary`` file and its folder (an open ONNX Runtime session does not need them)."""
    path.unlink(missing_ok=True)
    try:
        os.rmdir(path.parent)
    except OSError:
        pass


def remove_if_temporary(got: CachedOnnx) -> None:
    """Call once the file is loaded: removes a ``temporary`` export, keeps a cached one."""
    if got.temporary:
        _remove_temporary(got.path)
