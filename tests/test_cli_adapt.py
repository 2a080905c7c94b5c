"""CLI of the adaptation commands: merge, models NAME, compare; user errors are one line, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "recipes" / "digits.yaml")


@pytest.mark.slow  # ~20 s; merging itself is tested in-process by tests/methods/test_peft.py in the default run
def test_merge_from_the_command_line(cli, tmp_path):
    cli("train", DIGITS, "train.max_steps=4", "adapt.mode=lora", "model.name=resnet8", "model.in_chans=1",
        "--out", tmp_path / "lora")
    res = cli("merge", tmp_path / "lora", "--out", tmp_path / "merged")
    assert "max |logit difference|" in res.stdout and (tmp_path / "merged" / "checkpoints" / "best.safetensors").is_file()
    res = cli("eval", tmp_path / "merged")
    assert "accuracy" in res.stdout.lower()


def test_merge_of_a_full_finetune_is_a_one_line_error(cli, tmp_path):
    # overrides may also follow the options
    cli("train", DIGITS, "--no-report", "--out", tmp_path / "full", "train.max_steps=3")
    assert "max_steps: 3" in (tmp_path / "full" / "config.yaml").read_text()
    res = cli("merge", tmp_path / "full", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nothing to merge" in res.stderr


def test_models_name_lists_lora_targets(cli):
    res = cli("models", "mobilenetv2")
    assert "features.18.0" in res.stdout and "Conv2d" in res.stdout and "head" not in res.stdout


def test_a_lora_target_that_matches_nothing_stops_before_training(cli, tmp_path):
    res = cli("train", DIGITS, "adapt.mode=lora", "adapt.lora.targets=[nothing]", "--out", tmp_path / "x", check=False)
    assert res.returncode == 2 and "matches no Linear/Conv2d module" in res.stderr and "features.0.0" in res.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()
