"""Training FLOP counts (engine/flops.py): right for depthwise/grouped convolutions, equal to
torch's FlopCounterMode where that is right, and recorded in run.json by a real training run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from visionsmith.config import load_config
from visionsmith.engine import flops as fl
from visionsmith.engine.flops import count_flops, training_flops_record
from visionsmith.engine.loop import fit

REPO = Path(__file__).resolve().parents[2]


def _fcm(fn) -> int:
    with FlopCounterMode(display=False) as m:
        fn()
    return m.get_total_flops()


def test_depthwise_and_grouped_conv_match_the_analytic_count():
    c, hw, groups = 32, 12, (32, 4, 1)
    for g in groups:
        conv = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, groups=g)
        hout = 6  # 12 px, stride 2, padding 1
        analytic = 2 * (2 * c) * (c // g) * 3 * 3 * hout * hout
        # the input carries a gradient (a trained layer before it) and the weight trains:
        # backward = grad input + grad weight = 2 x forward
        x = torch.rand(1, c, hw, hw, requires_grad=True)
        n = count_flops(conv, x)
        assert n.forward == analytic, g
        assert n.backward == 2 * analytic and n.train == 3 * analytic
    # depthwise, frozen weight: input gradient only; first layer (image needs no grad): weight gradient only
    dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
    analytic = 2 * c * 9 * hw * hw
    dw.requires_grad_(False)
    assert count_flops(dw, torch.rand(1, c, hw, hw, requires_grad=True)).backward == analytic
    dw.requires_grad_(True)
    assert count_flops(dw, torch.rand(1, c, hw, hw)).backward == analytic
    dw.requires_grad_(False)
    assert count_flops(dw, torch.rand(1, c, hw, hw)).backward == 0


def test_depthwise_backward_is_analytic_where_flop_counter_mode_is_not():
    """What the module exists for: on this torch, FlopCounterMode's depthwise backward is far off."""
    c, hw = 64, 16
    dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
    x = torch.rand(2, c, hw, hw, requires_grad=True)
    analytic_fwd = 2 * 2 * c * 9 * hw * hw
    fwd = _fcm(lambda: dw(x))
    assert fwd == analytic_fwd  # its forward formula is right for groups
    ours = count_flops(dw, x)
    assert ours.forward == analytic_fwd and ours.train == 3 * analytic_fwd
    fcm_bwd = _fcm(lambda: dw(x).sum().backward()) - fwd
    print(f"depthwise backward: FlopCounterMode {fcm_bwd / analytic_fwd:.1f}x forward, analytic 2x")


def test_frozen_backbone_pays_for_its_forward_only():
    """A linear probe: the frozen convolution needs no gradient at all, the head its weight gradient only."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    m[0].requires_grad_(False)
    n = count_flops(m, torch.rand(1, 3, 8, 8))
    conv, head = 2 * 8 * 3 * 9 * 64, 2 * 512 * 10
    assert (n.forward, n.backward) == (conv + head, head)


class _Plain(nn.Module):
    """Convolutions (no groups), a transposed convolution, linears, a matmul and attention."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2)
        self.up = nn.ConvTranspose2d(24, 8, 2, stride=2)
        self.fc1 = nn.Linear(8 * 14 * 14, 64)
        self.tok = nn.Linear(8, 32)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.up(F.relu(self.c2(F.relu(self.c1(x)))))  # [B, 8, 14, 14]
        t = self.tok(x.flatten(2).transpose(1, 2))  # [B, 196, 32] tokens
        t = t @ t.transpose(1, 2)[..., :32]  # a plain batched matmul: [B, 196, 32]
        return self.fc2(F.relu(self.fc1(x.flatten(1)))) + t.mean()


def test_plain_model_forward_and_backward_equal_flop_counter_mode():
    m = _Plain()
    x = torch.rand(2, 3, 16, 16)  # c2 -> 7 x 7, up -> 14 x 14
    ours = count_flops(m, x)
    assert ours.forward == _fcm(lambda: m(x))
    # no grouped convolution here, so FlopCounterMode's backward is right too: the totals agree,
    # including the first layer's missing input gradient
    assert ours.train == _fcm(lambda: m(x).sum().backward())
    assert set(ours.by_op) >= {"convolution", "addmm", "bmm"}


def test_attention_is_counted():
    """Attention (QK^T and PV): FlopCounterMode on CPU has no rule for the CPU kernel; ours does."""
    b, h, lq, d = 1, 4, 17, 16

    class A(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)
    q = torch.rand(b, h, lq, d, requires_grad=True)
    n = count_flops(A(), q)
    assert n.forward == 2 * (2 * b * h * lq * lq * d)
    assert n.backward == 2 * n.forward  # dV, dP, dQ, dK


def test_count_leaves_the_model_as_it_was():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    m.train()
    m[2].eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(1, 3, 8, 8)
    rng = torch.get_rng_state()
    count_flops(m, x)
    assert [x.training for x in m.modules()] == [True, True, True, False, True, True]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_record_never_raises():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    rec, timing = training_flops_record(Broken(), (3, 8, 8), torch.device("cpu"), 100.0)
    assert rec["train_flop_per_image"] is None and "boom" in rec["reason"]
    assert timing == {"train_gflop_per_s": None, "matmul_peak_gflop_per_s": None, "share_of_peak": None}


def test_matmul_peak_is_cached():
    a = fl.matmul_peak("cpu", n=256)
    assert a["gflop_per_s"] > 0 and a["n"] == 256 and a["threads"] == torch.get_num_threads()
    assert fl.matmul_peak("cpu", n=256) is a


def test_training_run_records_flops(tmp_path):
    cfg = load_config(REPO / "recipes" / "digits.yaml", ["train.max_steps=3", "train.epochs=1", "train.threads=1",
                                                          "train.log_every=1"])
    run = fit(cfg, out=tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    f, t = info["flops"], info["timing"]
    assert f["input_shape"] == [1, 16, 16] and "reason" not in f
    assert f["train_flop_per_image"] == f["forward_flop_per_image"] + f["backward_flop_per_image"] > 0
    # every weight trains: backward is 2x forward, less the first convolution's input gradient
    assert f["forward_flop_per_image"] < f["backward_flop_per_image"] < 2 * f["forward_flop_per_image"]
    assert t["train_gflop_per_s"] > 0 and t["matmul_peak_gflop_per_s"] > 0 and 0 < t["share_of_peak"]
    assert t["train_gflop_per_s"] == pytest.approx(f["train_flop_per_image"] * t["train_img_per_s"] / 1e9, rel=1e-3)
    assert f["matmul_peak"]["threads"] == 1

    from visionsmith.report import load_run, render_report
    html = render_report(load_run(run))
    assert "train compute" in html and "GFLOP/s" in html and "of peak" in html
