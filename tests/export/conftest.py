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


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory) -> Path:
    """MobileNetV2 + FPN segmentation on 64 px fashion-mnist scenes (COCO format; 192 train, 24 val,
    24 test), 24 steps from the embedded ImageNet weights (~10 s on one core; one thread: on a busy
    2-core machine two threads made the same training 15x slower)."""
    from visionsmith.data.scenes import ensure_scenes
    torch.set_num_threads(1)
    root = ensure_scenes(canvas=64, n_train=192, n_val=24, n_test=24)
    over = ["data.name=coco", f"data.root={root}", "data.image_size=64", "model.name=mobilenetv2",
            "model.pretrained=true", "train.batch_size=16", "train.epochs=2", "train.eval_batch_size=24", "train.threads=1",
            "seg.channels=32"]
    return api.train(REPO / "recipes" / "scenes-seg.yaml", overrides=over,
                     out=tmp_path_factory.mktemp("export") / "seg", report=False)
