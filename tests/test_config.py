"""Config: typed, YAML + dotted overrides, errors that name the key and the allowed values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visionsmith.config import ConfigError, from_dict, load_config, parse_value, save_config, to_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_loads(recipe):
    if recipe.stem.startswith("compare-"):  # a comparison spec (`visionsmith compare`), not a run recipe
        from visionsmith.workflows.compare import load_spec
        spec, runs = load_spec(recipe)
        for r in runs:  # every run's overrides make a valid config (${run} references: any string will do)
            over = [o.replace("${", "/tmp/").replace("}", "") for o in spec.overrides + r.overrides]
            assert load_config(REPO / "recipes" / f"{spec.base}.yaml", over).train.epochs >= 1
        return
    cfg = load_config(recipe)
    assert cfg.train.epochs >= 1


def test_overrides_are_typed():
    cfg = load_config(REPO / "recipes" / "digits.yaml",
                      ["train.lr=3e-4", "train.epochs=2", "data.augment.scale=[0.5, 1]", "train.grad_clip=none",
                       "model.kwargs={width: 8}", "data.augment.hflip=false"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2 and cfg.data.augment.scale == (0.5, 1.0)
    assert load_config(None, ["train.amp=off"]).train.amp == "off"  # not YAML 1.1's False
    assert cfg.train.grad_clip is None and cfg.model.kwargs == {"width": 8} and cfg.data.augment.hflip is False


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "unknown config key 'train.lrr'. Did you mean 'train.lr'?"),
    ("trian.lr=1", "unknown config key 'trian'"),
    ("train.optimizer=adam", "train.optimizer: 'adam' is not allowed; use one of 'adamw', 'sgd'"),
    ("train.epochs=1.5", "train.epochs: expected an integer"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("train.ema=maybe", "train.ema: expected true or false"),
    ("data.augment.scale=[0.5]", "data.augment.scale: expected a list of 2 values"),
    ("data.name=imagenet", "data.name: 'imagenet' is not allowed"),
    ("train.lr", "must look like key.subkey=value"),
    ("train.amp=of", "train.amp: 'of' is not allowed"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_typo_in_a_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  nmae: resnet20\n")
    with pytest.raises(ConfigError, match=r"'model.nmae'.*Did you mean 'model.name'"):
        load_config(p)
    p.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "recipes" / "digits.yaml", ["train.lr=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    again = from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert to_dict(again) == to_dict(cfg)


def test_parse_value():
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("none") is None and parse_value("true") is True and parse_value("abc") == "abc"


@pytest.mark.parametrize("override, key", [
    ("train.checkpoint_every=-1", "train.checkpoint_every"), ("train.warmup_epochs=-5", "train.warmup_epochs"),
    ("train.max_steps=-1", "train.max_steps"), ("train.max_steps=0", "train.max_steps"),
    ("train.log_every=0", "train.log_every"), ("train.threads=0", "train.threads"),
    ("train.grad_clip=-1", "train.grad_clip"), ("name=../../../x", "name="), ("name=/tmp/x", "name="),
    ("name=..", "name="), ("name=a/b", "name=")])
def test_values_out_of_range_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_every_recipe_still_loads():
    recipes = [p for p in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
               if not p.name.startswith("compare-")]  # compare-*.yaml are `visionsmith compare` specs
    assert len(recipes) >= 7
    for recipe in recipes:
        load_config(recipe)
