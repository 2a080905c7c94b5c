"""Segmentation losses: cross-entropy matches torch, Dice behaves at its extremes, ignore pixels are out."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visionsmith.losses import IGNORE_INDEX, CrossEntropy2d, DiceLoss, SegLoss


def _batch(b=2, k=4, h=6, w=5, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    target = torch.randint(0, k, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < ignore_frac] = IGNORE_INDEX
    return logits, target


def _confident(target, k, margin=50.0):
    """Logits [B, K, H, W] with ``margin`` on the target class (class 0 at ignored pixels)."""
    return F.one_hot(torch.where(target == IGNORE_INDEX, 0, target), k).permute(0, 3, 1, 2).float() * margin


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 3.0]])
def test_cross_entropy_equals_torch(smoothing, weights):
    logits, target = _batch()
    got = CrossEntropy2d(label_smoothing=smoothing, class_weights=weights)(logits, target)
    w = None if weights is None else torch.tensor(weights)
    want = F.cross_entropy(logits, target, weight=w, ignore_index=255, label_smoothing=smoothing)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("loss", [CrossEntropy2d(), CrossEntropy2d(class_weights=[1, 2, 3, 4]), DiceLoss(),
                                  SegLoss(1.0, 1.0)], ids=["ce", "ce-weighted", "dice", "ce+dice"])
def test_all_ignored_batch_gives_zero_with_a_graph(loss):
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), IGNORE_INDEX)
    value = loss(logits, target)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_dice_extremes():
    k = 4
    target = torch.arange(k).repeat_interleave(100).reshape(1, 20, 20)  # every class, 100 pixels each
    assert DiceLoss()(_confident(target, k), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = (target + 1) % k  # every pixel confidently in another class
    # per class: intersection 0, 100 predicted + 100 true pixels: Dice = (0 + 1) / (200 + 1)
    assert DiceLoss()(_confident(wrong, k), target).item() == pytest.approx(1 - 1 / 201, abs=1e-6)
    # classes absent from both target and prediction score Dice 1 (the smoothing term): still 0 loss
    only_two = target % 2
    assert DiceLoss()(_confident(only_two, k), only_two).item() == pytest.approx(0.0, abs=1e-6)


def test_ignored_pixels_do_not_change_losses():
    logits, target = _batch(ignore_frac=0.3)
    other = logits.clone()
    other[(target == IGNORE_INDEX).unsqueeze(1).expand_as(other)] = 1e3 * torch.randn(()).abs() + 7.0
    for loss in (DiceLoss(), CrossEntropy2d(), SegLoss(0.5, 2.0)):
        torch.testing.assert_close(loss(other, target), loss(logits, target))
    # ... and the number equals the loss on the labelled pixels alone (one image, pixels as columns)
    keep = target != IGNORE_INDEX
    flat_logits = logits.permute(1, 0, 2, 3)[:, keep].unsqueeze(0).unsqueeze(-1)  # [1, K, N, 1]
    flat_target = target[keep].reshape(1, -1, 1)
    torch.testing.assert_close(DiceLoss()(flat_logits, flat_target), DiceLoss()(logits, target))


def test_dice_matches_a_direct_formula():
    logits, target = _batch(k=3, ignore_frac=0.0)
    p = logits.softmax(1)
    g = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    dice = [(2 * (p[:, c] * g[:, c]).sum() + 1) / (p[:, c].sum() + g[:, c].sum() + 1) for c in range(3)]
    torch.testing.assert_close(DiceLoss()(logits, target), 1 - torch.stack(dice).mean())


def test_gradients_flow_and_seg_loss_combines():
    logits, target = _batch()
    for loss in (CrossEntropy2d(), DiceLoss(), SegLoss(1.0, 0.5)):
        x = logits.clone().requires_grad_(True)
        loss(x, target).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # no gradient reaches an ignored pixel
        assert x.grad.permute(0, 2, 3, 1)[target == IGNORE_INDEX].abs().max() == 0
    both = SegLoss(ce_weight=0.3, dice_weight=2.0)(logits, target)
    torch.testing.assert_close(both, 0.3 * CrossEntropy2d()(logits, target) + 2.0 * DiceLoss()(logits, target))
    torch.testing.assert_close(SegLoss()(logits, target), CrossEntropy2d()(logits, target))


def test_dice_in_half_precision_logits():
    logits, target = _batch()
    torch.testing.assert_close(DiceLoss()(logits.bfloat16(), target), DiceLoss()(logits.bfloat16().float(), target))


def test_class_weights_follow_the_module_and_stay_out_of_the_state_dict():
    loss = CrossEntropy2d(class_weights=[1.0, 2.0]).to(torch.float64)
    assert loss.class_weights.dtype == torch.float64 and "class_weights" not in loss.state_dict()


def test_clear_errors():
    with pytest.raises(ValueError, match=r"logits \[B, K, H, W\] and target \[B, H, W\]"):
        CrossEntropy2d()(torch.randn(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        CrossEntropy2d(class_weights=[1, 2, 3])(*_batch())
    with pytest.raises(ValueError, match="not both 0"):
        SegLoss(0.0, 0.0)
