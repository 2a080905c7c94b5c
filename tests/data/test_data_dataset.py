"""ImageDataset validation and subset; the split helpers."""
from __future__ import annotations

import pytest
import torch

from visionsmith.data import DataError, ImageDataset
from visionsmith.data import splits


def tiny(n=10) -> ImageDataset:
    return ImageDataset(torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2),
                        torch.arange(n) % 2, ["a", "b"], "tiny", [f"{i}.png" for i in range(n)],
                        [("bad.png", "zero-byte file")])


def test_subset_and_len():
    ds = tiny()
    sub = ds.subset(torch.tensor([3, 1]))
    assert len(sub) == 2 and sub.labels.tolist() == [1, 1] and sub.paths == ["3.png", "1.png"]
    assert torch.equal(sub.images[0], ds.images[3]) and sub.skipped == [] and sub.classes == ["a", "b"]
    assert len(ds.subset(ds.labels == 0)) == 5
    assert ds.class_counts().tolist() == [5, 5] and ds.num_classes == 2


def test_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), ["a"], "x")
    with pytest.raises(ValueError, match="int64"):
        ImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"], "x")


def test_allocate_is_exact_and_proportional():
    assert splits.allocate([6000] * 10, 6000) == [600] * 10
    assert sum(splits.allocate([7, 5, 3], 4)) == 4
    assert splits.allocate([1, 0], 0) == [0, 0]


def test_holdout_refuses_to_empty_a_class():
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 'b'.*1 image"):
        splits.holdout(labels, ["a", "b"], 0.5, splits.generator(0, 1), "data.val_fraction")
    rest, held = splits.holdout(torch.tensor([0, 0, 1, 1]), ["a", "b"], 0.9, splits.generator(0, 1), "k")
    assert sorted(torch.tensor([0, 0, 1, 1])[rest].tolist()) == [0, 1]  # the last image of a class stays
