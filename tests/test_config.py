"""Config loading: the real params.yaml validates, and every kind of mistake names its key."""

import pytest
import yaml

from dirl.config import Config, ConfigError, config_from_dict, load_config, parse_override, save_resolved


def test_real_params_load(params_path):
    cfg = load_config(params_path)
    assert isinstance(cfg, Config)
    assert cfg.model.input_size % 16 == 0
    assert cfg.data.source in ("sample", "photos", "iharmony4")


def test_every_dataclass_default_is_valid():
    cfg = config_from_dict({})
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.milestones == [30, 40, 50, 55]


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"train": {"lrr": 1e-3}}, "train.lrr", "unknown key"),
        ({"bogus": {}}, "bogus", "unknown key"),
        ({"train": {"lr": "fast"}}, "train.lr", "expected number"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "expected integer"),
        ({"train": {"lr": -1.0}}, "train.lr", "> 0.0"),
        ({"model": {"name": "resnet"}}, "model.name", "'dirl'"),
        ({"synth": {"methods": ["reinhard", "sepia"]}}, "synth.methods", "'xiao'"),
        ({"data": {"iharmony4": {"split": "half"}}}, "data.iharmony4.split", "'le50'"),
        ({"train": {"channels_last": "yes"}}, "train.channels_last", "true/false"),
        ({"model": {"input_size": 100}}, "model.input_size", "multiple of 16"),
    ],
)
def test_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "params.yaml")
    msg = str(e.value)
    assert key in msg and words in msg and "params.yaml" in msg


def test_unknown_key_lists_allowed(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"tune": {"samples": 3}}))
    with pytest.raises(ConfigError, match="num_samples") as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_overrides_and_resolved_roundtrip(params_path, tmp_path):
    key, value = parse_override("train.lr=3e-4")
    cfg = load_config(params_path, overrides={key: value, "tune.enabled": False})
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.tune.enabled is False
    out = save_resolved(cfg, tmp_path / "out")
    again = config_from_dict(yaml.safe_load(out.read_text()))
    assert again == cfg


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_profile_validates():
    from pathlib import Path

    profiles = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "iharmony4-gpu"}
    for p in profiles:
        load_config(p)
