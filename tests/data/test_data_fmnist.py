"""Fashion-MNIST from the real Debian idx files, and the digits set from scikit-learn."""
from __future__ import annotations

import dataclasses
import gzip

import pytest
import torch

from visionsmith import assets
from visionsmith.config import DataConfig
from visionsmith.data import DataError, build_datasets
from visionsmith.data.fashion_mnist import CLASSES, read_idx


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    # module scope runs before the per-test VISIONSMITH_HOME fixture: give it its own home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONSMITH_HOME", str(tmp_path_factory.mktemp("fmnist_home")))
        return build_datasets(DataConfig(name="fashion_mnist", val_fraction=0.1), seed=0)


def test_shapes_labels_and_class_counts(fmnist):
    tr, va, te = fmnist["train"], fmnist["val"], fmnist["test"]
    assert tr.classes == CLASSES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert tr.images.shape == (54000, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert va.images.shape == (6000, 1, 28, 28)
    assert te.images.shape == (10000, 1, 28, 28)
    assert len(tr) + len(va) == 60000
    assert tr.labels.dtype == torch.int64 and int(tr.labels.min()) == 0 and int(tr.labels.max()) == 9
    # Fashion-MNIST is balanced: 6000 per class in train, 1000 in test; val is stratified
    assert te.class_counts().tolist() == [1000] * 10
    assert va.class_counts().tolist() == [600] * 10
    assert tr.class_counts().tolist() == [5400] * 10
    assert {tr.name, va.name, te.name} == {"fashion_mnist/train", "fashion_mnist/val", "fashion_mnist/test"}
    assert tr.paths is None and tr.skipped == []
    assert 60 < tr.images.float().mean() < 90  # real clothing pictures, not zeros


def test_val_fraction_honoured_and_split_deterministic(fmnist):
    torch.manual_seed(123)  # the split must not depend on the global RNG
    again = build_datasets(DataConfig(val_fraction=0.1), seed=0)
    assert torch.equal(again["val"].images, fmnist["val"].images)
    assert torch.equal(again["train"].labels, fmnist["train"].labels)

    other = build_datasets(DataConfig(val_fraction=0.25), seed=1)
    assert len(other["val"]) == 15000 and len(other["train"]) == 45000
    assert other["val"].class_counts().tolist() == [1500] * 10
    assert torch.equal(other["test"].images, fmnist["test"].images)  # test never moves
    seed1 = build_datasets(DataConfig(val_fraction=0.1), seed=1)
    assert not torch.equal(seed1["val"].images, fmnist["val"].images)


def test_train_limit_is_stratified_and_keeps_val(fmnist):
    ds = build_datasets(DataConfig(train_limit=1000), seed=0)
    assert len(ds["train"]) == 1000 and ds["train"].class_counts().tolist() == [100] * 10
    assert torch.equal(ds["val"].images, fmnist["val"].images)  # val does not move with train_limit
    with pytest.raises(DataError, match="train_limit=5 keeps no training image"):
        build_datasets(DataConfig(train_limit=5), seed=0)


def test_missing_asset_says_how_to_get_it(monkeypatch):
    name = "fashion-mnist-train-images"
    gone = dataclasses.replace(assets.ASSETS[name], system_path="/nonexistent/train-images-idx3-ubyte.gz")
    monkeypatch.setitem(assets.ASSETS, name, gone)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_datasets(DataConfig(), seed=0)


def test_idx_magic_and_size_checked(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02"))
    with pytest.raises(DataError, match="magic"):
        read_idx(bad, 0x803, (28, 28))
    with pytest.raises(DataError, match="idx header says"):
        read_idx(bad, 0x801, ())
    ok = tmp_path / "ok.gz"
    ok.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"\x01\x02"))
    assert read_idx(ok, 0x801, ()).tolist() == [1, 2]
    notgz = tmp_path / "n.gz"
    notgz.write_bytes(b"plain")
    with pytest.raises(DataError, match="gzip"):
        read_idx(notgz, 0x801, ())


def test_digits():
    ds = build_datasets(DataConfig(name="digits", val_fraction=0.1), seed=0)
    tr, va, te = ds["train"], ds["val"], ds["test"]
    assert len(tr) + len(va) + len(te) == 1797
    assert len(te) == 359  # test_fraction 0 -> 0.2 for digits
    assert len(va) == round(0.1 * (1797 - 359))
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == torch.uint8
    assert int(tr.images.max()) == 255  # 0..16 scaled to 0..255
    assert tr.classes == [str(d) for d in range(10)]
    assert (te.class_counts() >= 35).all()  # stratified
    ds2 = build_datasets(DataConfig(name="digits", test_fraction=0.5), seed=3)
    assert len(ds2["test"]) == 899  # round(1797 * 0.5)


def test_parsed_tensors_cached(vs_home):
    from visionsmith.data import cache, fashion_mnist
    first = fashion_mnist.load()
    files = list((vs_home / "cache").glob("fashion_mnist-*.pt"))
    assert len(files) == 1 and not list((vs_home / "cache").glob("*.tmp"))
    hits = cache.stats["cache_hits"]
    second = fashion_mnist.load()
    assert cache.stats["cache_hits"] == hits + 1
    for s in ("train", "test"):
        assert torch.equal(first[s].images, second[s].images) and torch.equal(first[s].labels, second[s].labels)
    files[0].write_bytes(b"damaged")  # a broken cache file is parsed over, not trusted
    third = fashion_mnist.load()
    assert cache.stats["cache_hits"] == hits + 1 and torch.equal(third["test"].images, first["test"].images)
