"""Tiny trained runs shared by the export tests (each trains in seconds on two cores)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visionsmith import api

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "recipes" / "digits.yaml"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """simple_cnn on 8x8 digits at 16 px, the recipe as is (~98% test accuracy, ~7 s)."""
    torch.set_num_threads(2)
    return api.train(DIGITS, out=tmp_path_factory.mktemp("export") / "digits", report=False)


@pytest.fixture(scope="session")
def resnet8_run(tmp_path_factory) -> Path:
    """CIFAR-style ResNet-8 (residual adds, BatchNorm folded on export) on digits at 16 px, 2 epochs."""
    torch.set_num_threads(2)
    return api.train(DIGITS, overrides=["model.name=resnet8", "train.epochs=2"],
                     out=tmp_path_factory.mktemp("export") / "resnet8", report=False)
