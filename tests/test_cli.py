"""End to end from the command line: digits recipe -> run folder -> eval, predict, report; and
the one-line errors a user gets for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "recipes" / "digits.yaml"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One real training run of recipes/digits.yaml through the CLI, shared by the tests below."""
    import os
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("cli") / "digits"
    res = subprocess.run([sys.executable, "-m", "visionsmith", "train", str(DIGITS), "train.threads=1",
                          "--out", str(out)], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr
    return out, res


def test_train_writes_a_complete_run_folder(digits_run):
    out, res = digits_run
    for name in ["config.yaml", "metrics.jsonl", "run.json", "eval.json", "eval_worst.npz", "report.html",
                 "model_card.md", "checkpoints/last.safetensors", "checkpoints/best.safetensors"]:
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "done" and info["seed"] == 0 and info["env"]["torch"]
    assert "git" in info and info["params"]["trainable"] > 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["acc"] > 0.85, ev["acc"]  # 8x8 digits: a small CNN gets ~0.95+ in 8 epochs
    assert "test accuracy" in res.stdout and str(out) in res.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "<script src=\"http" not in html


def test_eval_and_json(digits_run, cli):
    out, _ = digits_run
    res = cli("eval", out, "--json")
    m = json.loads(res.stdout)
    ev = json.loads((out / "eval.json").read_text())
    assert m["acc"] == pytest.approx(ev["acc"])  # re-evaluation gives the same number
    assert len(m["confusion"]) == 10
    text = cli("eval", out, "--split", "val").stdout
    assert "precision" in text and "val: accuracy" in text
    # the last weights are scored beside the run's result, never over it (eval.json holds a timing too)
    before = (out / "eval.json").read_text()
    assert "test: accuracy" in cli("eval", out, "--weights", "last").stdout
    assert (out / "eval.json").read_text() == before and (out / "eval-test-last.json").is_file()


def test_predict_answers_good_files_and_lists_bad_ones(digits_run, cli, tmp_path):
    out, _ = digits_run
    d = load_digits()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):  # real digits, written as 8-bit PNGs at 4x size
        img = (d.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(img).resize((32, 32), Image.NEAREST).save(folder / f"{i}_{d.target[i]}.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    res = cli("predict", out, folder, "--json", "--topk", "3")
    js = json.loads(res.stdout)
    assert len(js["predictions"]) == 6 and all(len(p["topk"]) == 3 for p in js["predictions"])
    correct = sum(p["topk"][0]["class"] == Path(p["path"]).stem.split("_")[1] for p in js["predictions"])
    assert correct >= 4
    assert sorted(Path(b["path"]).name for b in js["bad"]) == ["broken.png", "empty.png"]
    table = cli("predict", out, folder / "0_0.png", folder / "missing.png")
    assert "0_0.png" in table.stdout and "missing.png" in table.stderr


def test_help_explains_each_command(cli):
    for cmd in ["quickstart", "train", "eval", "predict", "resume", "models", "datasets", "assets", "report"]:
        res = cli(cmd, "--help")
        assert "example" in res.stdout and "usage: visionsmith " + cmd in res.stdout


def test_models_and_assets_listings(cli):
    names = [m["name"] for m in json.loads(cli("models", "--json").stdout)]
    assert {"mobilenetv2", "efficientnet_lite0", "simple_cnn", "resnet20"} <= set(names)
    assets = json.loads(cli("assets", "--json").stdout)
    assert all(a["ok"] for a in assets), assets


@pytest.mark.parametrize("args, needle", [
    (["train", DIGITS, "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "no-such-recipe"], "no config file or recipe named 'no-such-recipe'"),
    (["train", DIGITS, "model.name=resnet21"], "unknown model 'resnet21'"),
    (["eval", "/nonexistent/run"], "is not a run folder"),
])
def test_user_errors_are_one_line(cli, args, needle):
    res = cli(*args, check=False)
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_checkpoint_of_another_architecture(digits_run, cli, tmp_path):
    """A run folder whose config names another model than its weights: a clear error, not garbage."""
    import shutil
    out, _ = digits_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    cfg = (other / "config.yaml").read_text().replace("name: simple_cnn", "name: resnet8")
    (other / "config.yaml").write_text(cfg)
    res = cli("eval", other, check=False)
    assert res.returncode == 2 and "do not fit" in res.stderr and "Traceback" not in res.stderr


def test_half_written_run_folder(digits_run, cli, tmp_path):
    import shutil
    out, _ = digits_run
    half = tmp_path / "half"
    shutil.copytree(out, half)
    (half / "checkpoints" / "last.safetensors").unlink()
    res = cli("resume", half, check=False)
    assert res.returncode == 2 and "no committed checkpoint" in res.stderr
    (half / "checkpoints" / "best.safetensors").write_bytes(b"\x00" * 10)  # truncated weights
    res = cli("eval", half, check=False)
    assert res.returncode == 2 and "not a readable safetensors checkpoint" in res.stderr
    # the report still renders what is there
    assert (Path(cli("report", half).stdout.strip())).is_file()
    # a new run refuses to overwrite an existing one
    res = cli("train", DIGITS, "--out", out, check=False)
    assert res.returncode == 2 and "already holds a run" in res.stderr


def test_training_on_a_folder_skips_bad_files_or_stops_with_strict(cli, tmp_path):
    """Bad files in a user's folder: reported and skipped by default; --strict names the first one."""
    from visionsmith.data.synthetic import make_bad_files, make_image_folder
    root = make_image_folder(tmp_path / "shapes", classes=3, per_class=12, size=24)
    bad = make_bad_files(root / sorted(p.name for p in root.iterdir())[0])
    args = ["train", DIGITS, "data.name=folder", f"data.root={root}", "data.image_size=16", "data.test_fraction=0.2",
            "data.max_pixels=1000000", "model.in_chans=3", "train.epochs=2", "train.batch_size=8", "train.threads=1"]
    res = cli(*args, "--out", tmp_path / "lenient")
    info = json.loads((tmp_path / "lenient" / "run.json").read_text())
    skipped = {Path(p).name for p, _ in info["data"]["skipped"]}
    assert {bad[c].name for c in ("zero_byte", "truncated", "not_image", "bomb")} <= skipped
    assert bad["exif_rotated"].name not in skipped and bad["cmyk"].name not in skipped  # odd but valid
    assert "skipped" in res.stdout and "bad training file" in res.stdout
    res = cli(*args, "--strict", "--out", tmp_path / "strict", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert any(bad[c].name in res.stderr for c in ("zero_byte", "truncated", "not_image", "bomb"))


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback():
    from visionsmith.cli import _is_user_error
    from visionsmith.config import ConfigError
    from visionsmith.data import DataError
    from visionsmith.engine.checkpoint import CheckpointError
    from visionsmith.errors import UnknownNameError, UserError
    from visionsmith.models.weights import WeightLoadError
    for e in (ConfigError("x"), DataError("x"), CheckpointError("x"), UnknownNameError("x"), WeightLoadError("x"),
              UserError("x"), FileNotFoundError("x")):
        assert _is_user_error(e), type(e)
    # a bare ValueError or KeyError is an internal bug: "error: acc" would hide it
    for e in (ValueError("x"), KeyError("acc"), TypeError("x"), RuntimeError("x")):
        assert not _is_user_error(e), type(e)
    assert str(UnknownNameError("unknown model 'x'")) == "unknown model 'x'"  # not KeyError's quoted repr


@pytest.mark.parametrize("k", ["-3", "0", "2.5"])
def test_predict_topk_must_be_a_positive_integer(k):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "visionsmith", "predict", "no-run", "x.png", "--topk", k],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--topk" in r.stderr and "Traceback" not in r.stderr


def test_eval_of_an_unfinished_run_says_so(tmp_path, cli):
    from visionsmith.config import load_config
    from visionsmith.engine.loop import fit
    cfg = load_config(Path(__file__).resolve().parents[1] / "recipes" / "digits.yaml",
                      ["train.epochs=2", "train.threads=1", "train.checkpoint_every=5"])
    part = fit(cfg, out=tmp_path / "part", stop_after_steps=7)  # after the step-5 checkpoint
    res = cli("eval", part, "--split", "val")
    assert "this run is unfinished (status" in res.stderr and "step 5 of 40" in res.stderr and "accuracy" in res.stdout
    js = json.loads(cli("eval", part, "--json").stdout)
    assert js["run_status"] != "done" and js["run_step"] == 5 and js["run_total_steps"] == 40


def test_datasets_lists_every_task_source(cli):
    from visionsmith.tasks import task_class, task_names
    out = cli("datasets").stdout
    rows = {tuple(line.split()[:2]) for line in out.splitlines()[1:]}
    for task in task_names():  # every data.name a task reads is listed under that task
        for source in task_class(task).data_sources:
            assert (task, source) in rows, (task, source)
