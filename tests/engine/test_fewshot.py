"""Few-shot (prototypes on frozen features) and zero-shot (local CLIP) on real digits and on
synthetic data whose answer is known; bad input fails before any feature is computed."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from visionsmith import api
from visionsmith.cli import main as cli_main
from visionsmith.config import DataConfig
from visionsmith.data import BatchTransform, build_datasets
from visionsmith.workflows.fewshot import extract_features, fewshot_eval
from visionsmith.models import create_model
from visionsmith.models.weights import WeightLoadError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    """sklearn 8x8 digits (all 1,797 images, 10 classes), uint8 [N, 1, 8, 8]."""
    parts = build_datasets(DataConfig(name="digits", val_fraction=0.0), seed=0)
    images = torch.cat([parts["train"].images, parts["test"].images])
    labels = torch.cat([parts["train"].labels, parts["test"].labels])
    return images, labels, parts["train"].classes


# --- the evaluation itself --------------------------------------------------------------------


def test_raw_pixels_on_digits_well_above_chance_and_ci_shrinks(digits):
    images, labels, classes = digits
    feats = images.flatten(1).float()  # raw pixels [N, 64]: a real, if weak, feature extractor
    r = fewshot_eval(feats, labels, ways=5, shots=[1, 5], episodes=100, seed=0, classes=classes)
    one, five = r["results"]
    assert r["chance"] == 0.2 and r["n_classes"] == 10 and r["n_images"] == len(labels)
    assert one["acc"] > 0.6 and five["acc"] > 0.85, r  # digits are easy in pixel space
    assert five["acc"] > one["acc"]  # more support images, better prototypes
    few = fewshot_eval(feats, labels, ways=5, shots=[5], episodes=16, seed=1)["results"][0]
    many = fewshot_eval(feats, labels, ways=5, shots=[5], episodes=400, seed=1)["results"][0]
    # the interval is 1.96 std / sqrt(E): 25x the episodes -> ~5x narrower
    assert many["ci95"] < few["ci95"] / 2.5
    assert many["ci95"] == pytest.approx(1.96 * many["std"] / math.sqrt(400))


def test_random_cnn_features_on_digits(digits):
    images, labels, classes = digits
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=0, in_chans=1)
    tf = BatchTransform(False, 16, in_chans=1)
    feats = extract_features(model, images, tf, batch_size=512)
    assert feats.shape == (len(images), model.num_features)
    # eval mode inside (no dropout, running BN stats: the same features twice), caller's mode after
    assert model.training and torch.equal(feats, extract_features(model, images, tf, batch_size=512))
    r = fewshot_eval(feats, labels, ways=5, shots=[5], episodes=50, classes=classes)
    assert r["results"][0]["acc"] > 0.6  # even random conv features keep digits apart


def test_deterministic_for_a_seed_and_each_k_independent(digits):
    images, labels, _ = digits
    feats = images.flatten(1).float()
    a = fewshot_eval(feats, labels, ways=5, shots=[1, 5], episodes=30, seed=3)
    assert a == fewshot_eval(feats, labels, ways=5, shots=[1, 5], episodes=30, seed=3)
    assert a != fewshot_eval(feats, labels, ways=5, shots=[1, 5], episodes=30, seed=4)
    # adding a K does not move the numbers of the other K (each K has its own generator)
    only5 = fewshot_eval(feats, labels, ways=5, shots=[5], episodes=30, seed=3)["results"][0]
    assert only5 == a["results"][1]


def test_synthetic_clusters_known_answer():
    g = torch.Generator().manual_seed(0)
    n_cls, per, dim = 8, 40, 16
    labels = torch.arange(n_cls).repeat_interleave(per)
    noise = torch.randn(n_cls * per, dim, generator=g)
    centres = 20 * torch.eye(n_cls, dim)  # far apart relative to unit noise
    sep = fewshot_eval(centres[labels] + noise, labels, ways=5, shots=[1, 5], episodes=50)
    assert all(row["acc"] > 0.99 for row in sep["results"]), sep
    same = fewshot_eval(noise, labels, ways=5, shots=[1, 5], episodes=400)  # one cluster for all classes
    for row in same["results"]:
        assert abs(row["acc"] - 0.2) < max(0.03, 2 * row["ci95"]), row


# --- bad input -------------------------------------------------------------------------------


def test_more_shots_than_a_class_has(digits):
    images, labels, classes = digits
    keep = torch.cat([torch.nonzero(labels != 3).flatten(), torch.nonzero(labels == 3).flatten()[:12]])
    with pytest.raises(ValueError, match=r"class '3' has only 12 images.*lower --shots"):
        fewshot_eval(images[keep].flatten(1).float(), labels[keep], ways=5, shots=[1, 5], queries=10,
                     classes=classes)


@pytest.mark.parametrize("kw, msg", [({"ways": 11}, "more than the 10 classes"), ({"ways": 1}, "at least 2"),
                                     ({"shots": [0, 5]}, "at least 1"), ({"episodes": 0}, "episodes")])
def test_bad_arguments(digits, kw, msg):
    images, labels, _ = digits
    with pytest.raises(ValueError, match=msg):
        fewshot_eval(images.flatten(1).float(), labels, **{"ways": 5, "shots": [1], **kw})


def test_api_fails_before_building_the_model(monkeypatch):
    import visionsmith.models as models

    def boom(*a, **k):
        raise AssertionError("the model was built before the arguments were checked")
    monkeypatch.setattr(models, "create_model", boom)
    # digits' test split has ~36 images per class
    with pytest.raises(ValueError, match=r"class '\d' has only \d+ images.*50-shot"):
        api.fewshot("simple_cnn", data="digits", shots=[1, 50])


# --- end to end -------------------------------------------------------------------------------


def test_cli_model_name_json(cli, tmp_path):
    res = cli("fewshot", "simple_cnn", "--data", "digits", "--random-init", "--ways", "5", "--shots", "1,5",
                  "--episodes", "20", "--json", "--out", tmp_path / "fs.json")
    r = json.loads(res.stdout)
    assert r == json.loads((tmp_path / "fs.json").read_text())
    assert r["source"] == "model" and r["model"] == "simple_cnn" and r["weights"] == "random init"
    assert r["data"] == "digits" and r["split"] == "test" and r["feature_dim"] == 64
    assert [row["shots"] for row in r["results"]] == [1, 5] and r["chance"] == 0.2
    assert all(0.2 < row["acc"] <= 1 and row["ci95"] > 0 for row in r["results"])


def test_run_folder_and_cli_table(tmp_path, capsys):
    run = api.train(REPO / "recipes" / "digits.yaml", ["train.max_steps=3", "train.epochs=1", "train.threads=1",
                                                         "train.log_every=1"], out=tmp_path / "run", report=False)
    r = api.fewshot(run, shots=[1, 5], episodes=20)
    assert r["source"] == "run" and r["split"] == "test" and r["image_size"] == 16
    assert cli_main(["fewshot", str(run), "--data", "digits", "--split", "all", "--episodes", "10"]) == 0
    out = capsys.readouterr().out
    assert "shots  accuracy" in out and "digits all: 1797 images" in out


@pytest.mark.parametrize("args, msg", [
    (["fewshot", "simple_cnn", "--data", "digits", "--shots", "1,40"], "class '"),
    (["fewshot", "simple_cnn", "--data", "digits", "--ways", "12"], "more than the 10 classes"),
    (["fewshot", "no_such_model"], "unknown model"),
    (["fewshot", "simple_cnn", "--data", "nowhere/at/all"], "is not a dataset name"),
])
def test_cli_bad_input_one_line(args, msg, capsys):
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err


# --- zero-shot -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIP (2 layers, width 32, 32 px, patch 8) and a character-level
    CLIP tokenizer, saved like a real one: the folder a user would point ``zeroshot`` at."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    folder = tmp_path_factory.mktemp("tiny-clip")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,-/'")
    vocab = {t: i for i, t in enumerate(specials + chars + [c + "</w>" for c in chars])}
    tok = CLIPTokenizer(vocab=vocab, merges=[])  # no merges: one token per character
    tok.save_pretrained(folder)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(small, vocab_size=len(vocab), max_position_embeddings=64,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
                        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def test_zeroshot_tiny_clip(tiny_clip, digits):
    from visionsmith.workflows.zeroshot import image_embeddings, load_clip, zeroshot_eval
    images, labels, classes = digits
    idx = torch.arange(0, len(labels), 60)  # 30 images
    prompts = ["a photo of the digit {}.", "a drawing of a {}"]
    r = zeroshot_eval(tiny_clip, images[idx], labels[idx], classes, prompts)
    assert 0 <= r["acc"] <= 1 and 0 <= r["top5"] <= 1 and r["top5"] >= r["acc"]
    assert r["n"] == 30 and len(r["per_class"]) == 10 and r["prompts"] == prompts
    assert sum(row["n"] for row in r["per_class"]) == 30
    assert r == zeroshot_eval(tiny_clip, images[idx], labels[idx], classes, prompts)  # deterministic
    model, _, tf = load_clip(tiny_clip)
    assert tf.image_size == 32 and image_embeddings(model, images[idx], tf).shape == (30, 16)


def test_zeroshot_normalisation_from_the_folder(tiny_clip, tmp_path):
    import shutil

    from visionsmith.workflows.zeroshot import CLIP_MEAN, image_mean_std
    assert image_mean_std(tiny_clip) == (CLIP_MEAN, image_mean_std(tiny_clip)[1])  # none saved: CLIP's
    shutil.copytree(tiny_clip, tmp_path / "clip")
    norm = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (tmp_path / "clip" / "processor_config.json").write_text(json.dumps({"image_processor": norm}))  # transformers 5
    assert image_mean_std(tmp_path / "clip") == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(norm))  # transformers 4
    assert image_mean_std(tmp_path / "clip") == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_zeroshot_cli(tiny_clip, capsys):
    assert cli_main(["zeroshot", str(tiny_clip), "--data", "digits", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "test" and r["n"] == 359 and r["prompts"] == ["a photo of a {}."]


def test_zeroshot_not_a_clip_folder(tmp_path, tiny_clip, capsys):
    from transformers import ViTConfig
    vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    vit.save_pretrained(tmp_path)
    with pytest.raises(WeightLoadError, match="'vit' model, not a CLIP model"):
        api.zeroshot(tmp_path, data="digits")
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((tiny_clip / f).read_bytes())
    with pytest.raises(WeightLoadError, match="has no tokenizer"):
        api.zeroshot(no_tok, data="digits")
    assert cli_main(["zeroshot", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["zeroshot", str(tiny_clip), "--prompt", "no placeholder"]) == 2
    assert "needs a '{}'" in capsys.readouterr().err
