"""Shared check for methods that own state beyond the model (projectors, decoders, adapters)."""
from __future__ import annotations

import pytest
import torch

from visionsmith.engine.checkpoint import load_checkpoint
from visionsmith.engine.loop import fit


@pytest.fixture
def resumes_exactly(tmp_path):
    """``resumes_exactly(cfg, stop_at=9) -> (full run, resumed run, weights, resume state)``: trains
    ``cfg`` whole and again stopped after ``stop_at`` steps and resumed; asserts bit-equal weights
    and method state."""
    def check(cfg, stop_at: int = 9):
        torch.set_num_threads(1)
        full = fit(cfg, out=tmp_path / "full")
        part = fit(cfg, out=tmp_path / "part", stop_after_steps=stop_at)
        fit(cfg, resume=part)
        wa, sa, _ = load_checkpoint(full / "checkpoints")
        wb, sb, _ = load_checkpoint(part / "checkpoints")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert sa["method"].keys() == sb["method"].keys()
        assert all(torch.equal(sa["method"][k], sb["method"][k]) for k in sa["method"])
        return full, part, wa, sa
    return check
