"""Classification metrics checked against scikit-learn, the reference implementation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from visionsmith.tasks import ClassificationTask, compute_metrics, worst_mistakes


def _names(k: int) -> list[str]:
    return [f"c{i}" for i in range(k)]


def _sklearn_reference(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    k = logits.shape[1]
    y, p = labels.numpy(), logits.argmax(1).numpy()
    ks = list(range(k))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, p, labels=ks, zero_division=0)
    probs = logits.double().softmax(1).numpy()
    return {
        "acc": skm.accuracy_score(y, p),
        # sklearn wants a 1-d score for two classes; with K <= 5 top-K is trivially 1.
        "top5": skm.top_k_accuracy_score(y, probs, k=min(5, k), labels=ks) if k > 5 else 1.0,
        "macro_f1": skm.f1_score(y, p, labels=ks, average="macro", zero_division=0),
        "loss": skm.log_loss(y, probs, labels=ks),
        "precision": prec, "recall": rec, "f1": f1, "support": sup,
        "confusion": skm.confusion_matrix(y, p, labels=ks),
    }


def _assert_matches_sklearn(logits, labels):
    m = compute_metrics(logits, labels, _names(logits.shape[1]))
    ref = _sklearn_reference(logits, labels)
    for key in ("acc", "top5", "macro_f1", "loss"):
        assert m[key] == pytest.approx(ref[key], abs=1e-5), key
    for key in ("precision", "recall", "f1"):
        np.testing.assert_allclose(m["per_class"][key], ref[key], atol=1e-9, err_msg=key)
    assert m["per_class"]["support"] == ref["support"].tolist()
    assert m["confusion"] == ref["confusion"].tolist()
    assert m["n"] == len(labels)
    json.dumps(m)  # JSON-able, and no NaN sneaks in
    assert not any(math.isnan(v) for key in ("precision", "recall", "f1") for v in m["per_class"][key])
    return m


@pytest.mark.parametrize("k", [2, 3, 7, 12])
def test_random_logits_match_sklearn(k):
    g = torch.Generator().manual_seed(k)
    labels = torch.randint(0, k, (257,), generator=g)
    # Logits correlated with the labels, so that all metrics are away from 0 and 1.
    logits = torch.randn(257, k, generator=g) + 1.5 * F.one_hot(labels, k)
    _assert_matches_sklearn(logits, labels)


def test_perfect_predictions():
    labels = torch.arange(6).repeat(5)
    m = _assert_matches_sklearn(10 * F.one_hot(labels, 6).float(), labels)
    assert m["acc"] == m["top5"] == m["macro_f1"] == 1.0
    assert m["confusion"] == (5 * np.eye(6, dtype=int)).tolist()


def test_all_wrong():
    labels = torch.arange(4).repeat(3)
    logits = 10 * F.one_hot((labels + 1) % 4, 4).float()  # always the next class
    m = _assert_matches_sklearn(logits, labels)
    assert m["acc"] == 0.0 and m["macro_f1"] == 0.0
    assert m["per_class"]["precision"] == [0.0] * 4
    assert m["top5"] == 1.0  # K=4: top-4 always contains the truth


def test_class_without_support_or_predictions_scores_zero_not_nan():
    # Class 2 never appears as a label and is never predicted.
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 3])
    logits = torch.full((7, 4), -5.0)
    logits[torch.arange(7), torch.tensor([0, 1, 1, 1, 3, 3, 0])] = 5.0
    m = _assert_matches_sklearn(logits, labels)
    assert m["per_class"]["support"][2] == 0
    assert m["per_class"]["precision"][2] == m["per_class"]["recall"][2] == m["per_class"]["f1"][2] == 0.0
    # Macro-F1 averages over all K classes, the empty one included (sklearn labels=range(K)).
    assert m["macro_f1"] == pytest.approx(np.mean(m["per_class"]["f1"]))


def test_top5_with_many_classes_and_loss_has_no_smoothing():
    labels = torch.tensor([0, 1, 2])
    logits = torch.zeros(3, 10)
    logits[0, 0] = 1  # rank 1
    logits[1, :6] = torch.tensor([6.0, 0.5, 5, 4, 3, 2])  # label 1 ranks 6th: outside the top 5
    logits[2, [9, 8, 7, 6, 2]] = torch.tensor([5.0, 4, 3, 2, 1])  # rank 5: inside
    m = _assert_matches_sklearn(logits, labels)
    assert m["top5"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics(torch.zeros(2, 3), torch.tensor([0, 3]), _names(3))
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), _names(2))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        compute_metrics(torch.zeros(6), torch.tensor([0, 1]), _names(3))


def test_empty_split_is_json_safe():
    m = compute_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), _names(3))
    assert m["n"] == 0 and m["acc"] == 0.0
    json.dumps(m, allow_nan=False)


def test_worst_mistakes_are_wrong_and_sorted_by_confidence():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.tensor([
        [5.0, 0, 0],  # right
        [3.0, 0, 0],  # wrong, conf softmax([3,0,0])
        [0.0, 9, 0],  # wrong, most confident
        [0.0, 0, 1],  # wrong, least confident
        [0.0, 4, 0],  # right
        [0.0, 0, 7],  # right
    ])
    worst = worst_mistakes(logits, labels, k=16)
    assert [w["index"] for w in worst] == [2, 1, 3]
    assert [(w["label"], w["pred"]) for w in worst] == [(2, 1), (1, 0), (0, 2)]
    conf = [w["confidence"] for w in worst]
    assert conf == sorted(conf, reverse=True)
    assert conf[0] == pytest.approx(logits[2].softmax(0).max().item())
    assert [w["index"] for w in worst_mistakes(logits, labels, k=2)] == [2, 1]
    assert worst_mistakes(10 * F.one_hot(labels, 3).float(), labels) == []
    json.dumps(worst)


def test_task_loss_and_postprocess():
    task = ClassificationTask(classes=_names(7))
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(5, 7, generator=g), torch.randint(0, 7, (5,), generator=g)
    assert task.loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item())
    # Label smoothing: target (1 - eps) one-hot + eps / K everywhere (Szegedy et al. 2016).
    eps = 0.1
    soft = (1 - eps) * F.one_hot(target, 7) + eps / 7
    manual = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert task.loss(logits, target, label_smoothing=eps).item() == pytest.approx(manual.item(), rel=1e-5)

    probs, idx = task.postprocess(logits, k=5)
    assert probs.shape == idx.shape == (5, 5)
    assert torch.all(probs[:, :-1] >= probs[:, 1:])
    assert torch.equal(idx[:, 0], logits.argmax(1))
    assert task.postprocess(logits[:, :3], k=5)[0].shape == (5, 3)  # k capped at K
    assert task.metrics(logits, target)["classes"] == _names(7)
