"""`visionsmith compare`: several runs from one recipe, one table and plot; resumable; clear spec errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionsmith.workflows.compare import load_spec, run_comparison
from visionsmith.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

SPEC = f"""
name: tiny-compare
base: {REPO / 'recipes' / 'digits.yaml'}
overrides: [train.epochs=1, train.threads=1]
runs:
  - name: full
    overrides: []
  - name: linear
    overrides: [adapt.mode=linear, train.lr=0.01]
  - name: distilled
    overrides: [model.name=resnet8, method=distill, "distill.teacher=${{full}}"]
"""


def test_compare_trains_each_run_once_and_writes_table_and_plot(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    folder, rows = run_comparison(spec, tmp_path / "cmp")
    assert [r["name"] for r in rows] == ["full", "linear", "distilled"]
    assert [r["mode"] for r in rows] == ["scratch", "linear", "distill"]
    for r in rows:
        assert 0 < r["acc"] <= 1 and r["trainable"] > 0 and r["train_s"] > 0 and r["peak_mem_mb"] > 50
    assert rows[1]["trainable"] < rows[0]["trainable"] / 10  # a linear probe trains the head only
    saved = json.loads((folder / "compare.json").read_text())
    assert saved["rows"] == rows
    md = (folder / "compare.md").read_text()
    assert "| linear | simple_cnn | linear |" in md and "visionsmith compare" in md
    assert (folder / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # A second call reuses finished runs: nothing is trained again.
    stamp = (folder / "full" / "eval.json").stat().st_mtime_ns
    _, again = run_comparison(spec, tmp_path / "cmp")
    assert (folder / "full" / "eval.json").stat().st_mtime_ns == stamp and again == rows
    # An edited spec does not reuse a run made from the old one: a stale row would be wrong.
    spec.write_text(SPEC.replace("adapt.mode=linear, train.lr=0.01", "adapt.mode=linear, train.lr=0.02"))
    with pytest.raises(ConfigError, match=r"linear was trained with another configuration.*train\.lr differ"):
        run_comparison(spec, tmp_path / "cmp")


@pytest.mark.parametrize("body,match", [
    ("name: x\nbase: digits\nruns: []\n", "non-empty list"),
    ("name: x\nbase: digits\nruns: [{name: a, overrides: ['distill.teacher=${b}']}, {name: b}]\n",
     r"refers to \$\{b\}, which is not an earlier run"),
    ("name: x\nbase: digits\nruns: [{name: a, overide: []}]\n", "Did you mean 'runs\\[0\\].overrides'"),
    ("name: x\nbase: digits\nruns: [{name: 'a b'}]\n", "must be letters"),
])
def test_bad_specs_are_refused_before_any_training(tmp_path, body, match):
    spec = tmp_path / "spec.yaml"
    spec.write_text(body)
    with pytest.raises(ConfigError, match=match):
        load_spec(spec)


def test_the_shipped_adaptation_spec_is_valid():
    spec, runs = load_spec(REPO / "recipes" / "compare-adaptation.yaml")
    names = [r.name for r in runs]
    for want in ("scratch", "linear-probe", "full-finetune", "lora", "bitfit", "student-alone", "distilled-student"):
        assert want in names
