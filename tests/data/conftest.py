"""Fixtures for tests/data: a private VISIONSMITH_HOME per test (so caches never leak between
tests or into the user's home) and small real image folders written by ``synthetic``."""
from __future__ import annotations

import pytest

from visionsmith.data import synthetic


@pytest.fixture(autouse=True)
def vs_home(tmp_path, monkeypatch):
    home = tmp_path / "vs_home"
    monkeypatch.setenv("VISIONSMITH_HOME", str(home))
    return home


@pytest.fixture
def image_folder(tmp_path):
    """root/{circle,square,triangle}/0000.png ... 0007.jpg: 3 classes x 8 images of 24 px."""
    return synthetic.make_image_folder(tmp_path / "images", classes=3, per_class=8, size=24, seed=0)


@pytest.fixture
def bad_files(tmp_path):
    """{case: path} of every awkward file, in their own folder."""
    return synthetic.make_bad_files(tmp_path / "bad")
