"""The pieces of scripts/det_error_budget.py and scripts/scene_item_crops.py that decide their figures."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from det_error_budget import accuracy, best_hit, relabel  # noqa: E402
from scene_item_crops import crop_square  # noqa: E402


def test_a_crop_is_the_square_around_the_box_with_black_beyond_the_image():
    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    c = crop_square(img, [6, 2, 10, 4], pad=1)      # 4 x 2 box -> side 4 + 2 = 6 around (8, 3): x 5..10, y 0..5
    assert c.shape == (6, 6, 3)
    assert (c[:, 5] == 0).all()                      # column 10 lies beyond the image
    assert (c[:, :5] == img[0:6, 5:10]).all()


TRUTH = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([3, 5])}


def test_best_hit_takes_each_found_item_s_best_scoring_box_and_skips_the_missed():
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]),
            "scores": torch.tensor([0.2, 0.9, 0.99]), "labels": torch.tensor([3, 1, 5])}
    i, c = best_hit(pred, TRUTH)
    assert i.tolist() == [1] and c.tolist() == [3]  # the second true box has no box at IoU >= 0.5
    assert accuracy([pred["labels"]], [(i, c)]) == 0.0
    assert accuracy([torch.tensor([0, 3, 0])], [(i, c)]) == 1.0


def test_relabel_gives_found_boxes_their_true_class_and_suppresses_the_duplicates_that_makes():
    pred = {"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 2, 4])}
    out = relabel(pred, TRUTH, nms_iou=0.6)
    # both boxes on the first item become class 3, so class-aware NMS keeps the better one; the stray box keeps its class
    assert out["labels"].tolist() == [3, 4]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])
