"""Training FLOPs per image, counted analytically, and the machine's measured matmul peak.

Why not ``torch.utils.flop_counter.FlopCounterMode``: on torch 2.13 (CPU) its formula for the
backward of a grouped convolution over-counts a depthwise layer of C channels about C/2 times
(32x at 64 channels, 192x at 384; its forward is right), and it has no rule for
CPU attention (``aten._scaled_dot_product_flash_attention_for_cpu``), so a ViT's attention is left
out.  This module counts the same aten operations itself, with one formula per operation that
holds for any ``groups``.

Convention (the usual one for training FLOPs):

* A FLOP is half a multiply-add: forward FLOPs = 2 x the multiply-adds of convolutions (any
  ``groups``, transposed ones included), matrix products (``nn.Linear``, ``matmul``, ``bmm``,
  ``einsum``) and attention (``scaled_dot_product_attention``: QK^T and PV).  Convolution:
  ``2 * Cout * (Cin / groups) * kh * kw * Hout * Wout`` per image; a depthwise 3x3 layer on
  ``C`` channels is ``2 * C * 9 * Hout * Wout``.  Normalisation, activations, pooling, residual
  additions, the loss, the optimizer and EMA are elementwise and not counted.
* Backward: for each operation, one more forward's worth of FLOPs for every operand that needs a
  gradient -- the input gradient when the operation's input depends on a trained weight, the
  weight gradient when its weight trains.  So a layer inside the trained part costs 2x its
  forward in backward (3x in all), a frozen layer behind a trained one 1x (input gradient only),
  the first layer 1x (weight gradient only: no gradient is computed for the image), and a frozen
  layer before any trained one nothing.  With every weight trained this is the standard
  "backward ~ 2x forward" up to the first layer's missing input gradient; for a frozen backbone
  (linear probe, LoRA) it is what autograd actually computes.  Attention: 2x forward when its
  inputs need gradients.
* Training FLOPs per image = forward + backward of the *model* for one image at the run's input
  size.  A method's extra passes (a distillation teacher's forward, adversarial attack steps,
  a second self-supervised view) are not in it: for those methods the figure is a lower bound.

Counting runs the model once, in eval mode, on one image, under a ``TorchDispatchMode`` that
sees every aten operation with its shapes and ``requires_grad`` flags: cheap (one forward of
one image) and exact for the counted operations.

``achieved FLOP/s`` = training FLOPs per image x the run's training images/s; the training time
includes data indexing, augmentation and the optimizer, so it is an end-to-end figure.  It is
compared with a measured peak: the fastest of a few ``torch.mm`` of two 2048 x 2048 matrices (4096
on a GPU) in the run's compute dtype (fp32 unless AMP) with the run's thread count, measured once
per process.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["FlopCount", "count_flops", "matmul_peak", "training_flops_record"]

aten = torch.ops.aten


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _rg(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


# Each rule: (args, kwargs, out) -> (forward FLOPs, backward FLOPs).  Backward counts one product per
# gradient that autograd would compute: only for operands whose requires_grad is set.

def _conv(args, kwargs, out):
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    # weight: [Cout, Cin/groups, *k] (transposed: [Cin, Cout/groups, *k]); each output (input, when
    # transposed) position of each image does prod(weight.shape) multiply-adds, whatever the groups.
    positions = _prod(x.shape[2:]) if transposed else _prod(out.shape[2:])
    f = 2 * int(x.shape[0]) * positions * _prod(w.shape)
    return f, f * (_rg(x) + _rg(w))  # grad input and grad weight: one forward's multiply-adds each


def _mm(a, b):
    f = 2 * _prod(a.shape) * int(b.shape[-1])  # [.., M, K] @ [.., K, N]
    return f, f * (_rg(a) + _rg(b))  # dA = dC B^T, dB = A^T dC


def _mv(a, x):
    f = 2 * _prod(a.shape)  # [M, K] @ [K]
    return f, f * (_rg(a) + _rg(x))


def _sdpa(args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    lead, lq, e = _prod(q.shape[:-2]), int(q.shape[-2]), int(q.shape[-1])
    lk, ev = int(k.shape[-2]), int(v.shape[-1])
    qk, pv = 2 * lead * lq * lk * e, 2 * lead * lq * lk * ev  # S = Q K^T, O = P V
    bwd = pv * _rg(v)  # dV = P^T dO
    if _rg(q) or _rg(k):
        bwd += pv + qk * (_rg(q) + _rg(k))  # dP = dO V^T, then dQ = dS K, dK = dS^T Q
    return qk + pv, bwd


_RULES = {
    aten.convolution: _conv,
    aten._convolution: _conv,
    aten.mm: lambda a, kw, o: _mm(a[0], a[1]),
    aten.bmm: lambda a, kw, o: _mm(a[0], a[1]),
    aten.addmm: lambda a, kw, o: _mm(a[1], a[2]),
    aten.baddbmm: lambda a, kw, o: _mm(a[1], a[2]),
    aten.mv: lambda a, kw, o: _mv(a[0], a[1]),
    aten.addmv: lambda a, kw, o: _mv(a[1], a[2]),
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
    if hasattr(aten, _name):  # the fused attention kernels; the math fallback shows up as bmm
        _RULES[getattr(aten, _name)] = _sdpa


@dataclass
class FlopCount:
    """FLOPs of one forward (and the backward it implies) of the example given to ``count_flops``."""

    forward: int = 0
    backward: int = 0
    by_op: Counter = field(default_factory=Counter)  # aten op name -> forward FLOPs

    @property
    def train(self) -> int:
        return self.forward + self.backward


class _Counter(TorchDispatchMode):
    def __init__(self, count: FlopCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _RULES.get(func._overloadpacket)
        if rule is not None:
            fwd, bwd = rule(args, kwargs, out[0] if isinstance(out, (tuple, list)) else out)
            self.count.forward += fwd
            self.count.backward += bwd
            self.count.by_op[func._overloadpacket.__name__] += fwd
        return out


def count_flops(model: nn.Module, example: torch.Tensor) -> FlopCount:
    """Forward and backward FLOPs of ``model(example)`` by the convention in the module docstring.

    Runs one forward in eval mode with autograd on (the ``requires_grad`` flags say which
    gradients backward would compute), then puts each submodule back in the mode it was in; the
    weights, buffers and the global random state are left as they were.  ``example`` is a batch:
    divide by its size for a per-image figure.
    """
    count = FlopCount()
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), _Counter(count):
            model(example)
    finally:
        for m, was in modes:
            m.training = was
    return count


_PEAK_CACHE: dict[tuple, dict] = {}


def matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                n: int | None = None, seconds: float = 0.4) -> dict:
    """The fastest ``torch.mm`` of two ``n x n`` matrices (default 2048; 4096 on a GPU) in GFLOP/s,
    with the current thread count: three warm-ups, then repeats for about ``seconds`` (at least 3,
    at most 200).  Cached per (device, dtype, n, threads) for the process.
    -> {"gflop_per_s", "n", "dtype", "threads", "device", "reps"}"""
    device = torch.device(device)
    n = n or (4096 if device.type == "cuda" else 2048)
    key = (str(device), dtype, n, torch.get_num_threads())
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None

    def sync(device):  # GPU kernels are asynchronous: wait for them before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()
    # deterministic operands without touching the global random state
    a = torch.linspace(-1, 1, n * n, dtype=torch.float32).reshape(n, n).to(device=device, dtype=dtype)
    b = a.t().contiguous()
    for _ in range(3):  # warm-up: kernel choice, packing buffers, and the CPU's move to its matrix-unit
        torch.mm(a, b)  # power level (AMX/AVX-512 run slower for a while after a core starts using them)
    sync(device)
    best, reps, t_start = math.inf, 0, time.perf_counter()
    while reps < 3 or (reps < 200 and time.perf_counter() - t_start < seconds):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best, reps = min(best, time.perf_counter() - t0), reps + 1
    res = {"gflop_per_s": round(2 * n ** 3 / best / 1e9, 2), "n": n, "dtype": str(dtype).replace("torch.", ""),
           "threads": torch.get_num_threads(), "device": str(device), "reps": reps}
    _PEAK_CACHE[key] = res
    return res


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def training_flops_record(model: nn.Module, input_shape, device: torch.device, img_per_s: float | None,
                          world_size: int = 1, method: str = "supervised",
                          dtype: torch.dtype = torch.float32) -> tuple[dict, dict]:
    """(run.json ``flops`` record, fields for run.json ``timing``); never raises.

    ``input_shape`` is one image's [C, H, W] at the run's size; ``img_per_s`` the run's training
    images/s over all ``world_size`` processes, whose peak is taken as ``world_size`` x this
    process's measured peak.  On any failure the figures are null and ``reason`` says why.
    """
    rec: dict = {"train_flop_per_image": None, "forward_flop_per_image": None, "backward_flop_per_image": None,
                 "input_shape": list(input_shape) if input_shape is not None else None,
                 "counted": "2 x multiply-adds of convolutions (any groups), matrix products and attention; "
                            "backward: one forward's worth per operand that needs a gradient",
                 "scope": "the model's forward and backward once per training image"}
    if method != "supervised":
        rec["scope"] += (f"; method {method!r} may run more passes (teacher, attack steps, extra views) "
                         "that are not counted: a lower bound")
    timing = {"train_gflop_per_s": None, "matmul_peak_gflop_per_s": None, "share_of_peak": None}
    try:
        if input_shape is None:
            raise ValueError("no input shape")
        dtype_in = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        example = torch.full((1, *map(int, input_shape)), 0.5, device=device, dtype=dtype_in)
        c = count_flops(model, example)
        if c.train <= 0:
            raise ValueError("no convolution, matrix product or attention was counted")
        rec.update(train_flop_per_image=c.train, forward_flop_per_image=c.forward,
                   backward_flop_per_image=c.backward, by_op=dict(c.by_op))
    except Exception as e:  # noqa: BLE001 -- a figure about the run must never fail the run
        rec["reason"] = f"FLOP count failed: {type(e).__name__}: {e}"[:500]
        return rec, timing
    try:
        peak = matmul_peak(device, dtype)
        rec["matmul_peak"] = peak
        timing["matmul_peak_gflop_per_s"] = peak["gflop_per_s"]
    except Exception as e:  # noqa: BLE001
        rec["reason"] = f"matmul peak failed: {type(e).__name__}: {e}"[:500]
        peak = None
    if not img_per_s:
        rec.setdefault("reason", "no training step was timed: no FLOP/s")
    else:
        achieved = c.train * img_per_s / 1e9
        timing["train_gflop_per_s"] = _sig(achieved)
        if peak and peak["gflop_per_s"] > 0:
            timing["share_of_peak"] = _sig(achieved / (peak["gflop_per_s"] * max(1, world_size)))
    return rec, timing
