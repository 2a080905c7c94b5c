"""SegmentationMetrics: a numpy reference, a hand-counted mask, ignore pixels, and reduce over 2 gloo ranks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionsmith.metrics import SegmentationMetrics

IGN = 255


def _reference(preds: np.ndarray, target: np.ndarray, k: int) -> dict:
    """Straight from the definitions (module docstring), with numpy and Python loops."""
    keep = target != IGN
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (target[keep], preds[keep]), 1)
    n = cm.sum()
    iou, acc = [], []
    for c in range(k):
        tp, t, p = cm[c, c], cm[c, :].sum(), cm[:, c].sum()
        iou.append(tp / (t + p - tp) if t + p else None)
        acc.append(tp / t if t else None)
    return {
        "miou": np.mean([v for v in iou if v is not None]),
        "pixel_acc": np.trace(cm) / n,
        "mean_acc": np.mean([v for v in acc if v is not None]),
        "fwiou": sum(cm[c].sum() / n * iou[c] for c in range(k) if cm[c].sum()),
        "iou": iou, "acc": acc, "confusion": cm.tolist(),
    }


def _random(b=6, k=5, h=9, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    target = torch.randint(0, k - 1, (b, h, w), generator=g)  # class k-1 never labelled: only predicted
    target[torch.rand(b, h, w, generator=g) < 0.15] = IGN
    return logits, target


def _assert_same(got: dict, want: dict):
    for key in ("miou", "pixel_acc", "mean_acc", "fwiou"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    for key in ("iou", "acc"):
        assert [v is None for v in got["per_class"][key]] == [v is None for v in want[key]], key
        assert [v for v in got["per_class"][key] if v is not None] == pytest.approx(
            [v for v in want[key] if v is not None], abs=1e-12), key
    assert got["confusion"] == want["confusion"]


def test_against_numpy_reference_in_one_or_several_batches():
    k = 5
    logits, target = _random(k=k)
    want = _reference(logits.argmax(1).numpy(), target.numpy(), k)
    one = SegmentationMetrics(k)
    one.update(logits, target)  # logits: argmax inside
    got = one.compute()
    _assert_same(got, want)
    assert got["per_class"]["acc"][k - 1] is None and got["per_class"]["iou"][k - 1] == 0.0  # only predicted
    several = SegmentationMetrics(k)
    for i in range(0, 6, 2):
        several.update(logits[i:i + 2].argmax(1), target[i:i + 2])  # int predictions
    assert several.compute() == got
    assert got["n_pixels"] == int((target != IGN).sum()) and got["classes"] == [f"class_{i}" for i in range(k)]


def test_hand_counted_mask():
    # target (255 = void)      prediction
    #   0   0   1   1            0 0 1 0
    #   0   0   1   1            0 1 1 1
    #   2   2 255 255            2 2 0 1   <- the two void pixels do not count
    #   2   2   2   2            2 1 2 2
    # 14 labelled pixels; class 3 appears nowhere.  Confusion (rows true, columns predicted):
    #   0: [3 1 0 0]   1: [1 3 0 0]   2: [0 1 5 0]   3: [0 0 0 0]
    # support t = 4, 4, 6, 0; predicted p = 4, 5, 5, 0; correct 3 + 3 + 5 = 11
    # IoU = 3/(4+4-3) = 0.6, 3/(4+5-3) = 0.5, 5/(6+5-5) = 5/6, class 3 undefined (None, left out)
    # miou = (0.6 + 0.5 + 5/6) / 3 = 29/45;  pixel_acc = 11/14
    # mean_acc = (3/4 + 3/4 + 5/6) / 3 = 7/9;  fwiou = (4*0.6 + 4*0.5 + 6*5/6) / 14 = 9.4/14 = 47/70
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, IGN, IGN], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [2, 2, 0, 1], [2, 1, 2, 2]])
    m = SegmentationMetrics(4, class_names=["sky", "road", "tree", "car"])
    m.update(pred[None], target[None])
    r = m.compute()
    assert r["confusion"] == [[3, 1, 0, 0], [1, 3, 0, 0], [0, 1, 5, 0], [0, 0, 0, 0]]
    assert r["miou"] == pytest.approx(29 / 45) and r["pixel_acc"] == pytest.approx(11 / 14)
    assert r["mean_acc"] == pytest.approx(7 / 9) and r["fwiou"] == pytest.approx(47 / 70)
    assert r["per_class"]["iou"] == pytest.approx([0.6, 0.5, 5 / 6, None])
    assert r["per_class"]["acc"] == pytest.approx([0.75, 0.75, 5 / 6, None])
    assert r["per_class"]["support"] == [4, 4, 6, 0] and r["n_pixels"] == 14
    assert r["classes"] == ["sky", "road", "tree", "car"]
    json.dumps(r, allow_nan=False)  # JSON-able, no NaN anywhere


def test_ignored_pixels_are_excluded():
    k = 4
    logits, target = _random(k=k, seed=1)
    base = SegmentationMetrics(k)
    base.update(logits, target)
    shuffled = logits.clone()
    void = (target == IGN).unsqueeze(1).expand_as(logits)
    shuffled[void] = torch.randn(int(void.sum()))  # other predictions where the target is void
    other = SegmentationMetrics(k)
    other.update(shuffled, target)
    assert other.compute() == base.compute()
    custom = SegmentationMetrics(k, ignore_index=-1)  # another void value
    custom.update(logits, torch.where(target == IGN, -1, target))
    assert custom.compute() == base.compute()


def test_empty_and_reset():
    m = SegmentationMetrics(3)
    r = m.compute()  # nothing seen: zeros and Nones, never NaN
    assert (r["miou"], r["pixel_acc"], r["mean_acc"], r["fwiou"], r["n_pixels"]) == (0.0, 0.0, 0.0, 0.0, 0)
    assert r["per_class"]["iou"] == [None] * 3
    m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGN))  # all void
    assert m.compute()["n_pixels"] == 0
    m.update(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    assert m.compute()["miou"] == 1.0 and m.compute()["per_class"]["iou"] == [None, 1.0, None]
    m.reset()
    assert m.compute()["n_pixels"] == 0


def test_clear_errors():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\).*\[0, 7\]"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 2]]]))
    with pytest.raises(ValueError, match="logits have 4 channels, expected 3"):
        m.update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        m.update(torch.zeros(1, 3, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        SegmentationMetrics(3, class_names=["a", "b"])
    assert m.compute()["n_pixels"] == 0  # a rejected batch adds nothing


def test_reduce_without_a_process_group_is_a_no_op():
    logits, target = _random()
    m = SegmentationMetrics(5)
    m.update(logits, target)
    before = m.compute()
    m.reduce()
    assert m.compute() == before


def _reduce_worker(rank, world, init_file, logits, target, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = logits.shape[0] // world
    m = SegmentationMetrics(logits.shape[1])
    m.update(logits[rank * n:(rank + 1) * n], target[rank * n:(rank + 1) * n])
    local = m.compute()
    m.reduce()
    m.reduce()  # a second call must not double-count
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"local": local, "reduced": m.compute()}, f)
    dist.destroy_process_group()


def test_reduce_across_two_gloo_processes(tmp_path):
    """Each rank sees a different half of the data; after reduce every rank reports the metrics of
    the whole data, as a single process that saw all of it does."""
    import torch.multiprocessing as mp
    logits, target = _random(b=4, seed=3)
    target[2:][target[2:] == 0] = 1  # class 0 labelled on rank 0's half only: the halves differ
    mp.spawn(_reduce_worker, args=(2, tmp_path / "init", logits, target, tmp_path / "out"), nprocs=2)
    single = SegmentationMetrics(5)
    single.update(logits, target)
    want = json.loads(json.dumps(single.compute()))
    for rank in range(2):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got["reduced"] == want and got["local"] != want


def test_matches_torchmetrics_when_installed():
    tm = pytest.importorskip("torchmetrics.classification")
    k = 5
    logits, target = _random(k=k, seed=4)
    m = SegmentationMetrics(k)
    m.update(logits, target)
    r = m.compute()
    cm = tm.MulticlassConfusionMatrix(num_classes=k, ignore_index=IGN)(logits.argmax(1), target)
    assert cm.tolist() == r["confusion"]
    iou = tm.MulticlassJaccardIndex(num_classes=k, ignore_index=IGN, average="none")(logits.argmax(1), target)
    ours = r["per_class"]["iou"]
    assert [v for v in ours if v is not None] == pytest.approx(
        [float(v) for v, o in zip(iou, ours) if o is not None], abs=1e-6)
