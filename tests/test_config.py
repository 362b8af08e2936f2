"""Config loading: the real params.yaml validates, and every kind of mistake names its key."""

import pytest
import yaml

from dirl.config import Config, ConfigError, config_from_dict, load_config, parse_override, save_resolved
from helpers.hostile import HOSTILE_CONFIGS, hostile_file, raw_edit
from helpers.paths import PARAMS


def test_real_params_load(params_path):
    cfg = load_config(params_path)
    assert isinstance(cfg, Config)
    assert cfg.model.input_size % 16 == 0
    assert cfg.data.source in ("sample", "photos", "iharmony4")


def test_code_defaults_are_the_default_profile(params_path):
    """The dataclass defaults and params.yaml (the default profile) agree key for key."""
    assert config_from_dict({}).to_dict() == load_config(params_path).to_dict()


def test_moved_key_names_its_new_place(params_path, tmp_path):
    data = yaml.safe_load(params_path.read_text())
    data["train"]["num_workers"] = 2
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"'train.num_workers' has moved to 'cluster.num_workers'"):
        load_config(p)


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
        ({"tune": {"search_space": ["lr"]}}, "tune.search_space", "expected mapping"),
    ],
)
def test_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "params.yaml")
    msg = str(e.value)
    assert key in msg and words in msg and "params.yaml" in msg


def test_unknown_key_lists_allowed(params_path, tmp_path):
    p = tmp_path / "params.yaml"
    data = yaml.safe_load(params_path.read_text())
    data["tune"]["samples"] = 3
    p.write_text(yaml.safe_dump(data))
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


def test_every_profile_is_a_valid_overlay(params_path):
    """Each profile holds only keys of params.yaml, each with a value that differs from it; the iHarmony4 recipes
    pin every value of the recipe instead, so that a changed default never changes them silently."""
    from dirl.config import profile_overrides

    profiles = sorted((params_path.parent / "params").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "photos-cpu", "iharmony4-reference", "iharmony4-search"}
    base = load_config(params_path).to_dict()
    for p in profiles:
        cfg = load_config(params_path, profile=p).to_dict()
        for key, value in profile_overrides(p).items():
            section, name = key.split(".", 1)
            node = base[section]
            for part in name.split("."):
                node = node[part]
            pinned = p.stem.startswith("iharmony4-")
            assert pinned or node != value, f"{p.name}: {key} = {value!r} is params.yaml's value already: drop it"
        assert cfg != base


def test_profile_with_unknown_key_is_refused(params_path, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'train.epoch'"):
        load_config(params_path, profile=bad)


def test_write_profile_keeps_comments_and_matches_load(params_path, tmp_path):
    from dirl.config import write_profile

    p = tmp_path / "params.yaml"
    p.write_text(params_path.read_text())
    changed = write_profile(p, params_path.parent / "params" / "smoke.yaml")
    assert changed["model.input_size"] == (96, 64)
    text = p.read_text()
    assert "# DIRL pipeline parameters" in text and "# reference 224" in text  # comments survive
    assert load_config(p) == load_config(params_path, profile="smoke")


# ----------------------------------------------------------------------------- hostile params files
# Each case turns the real params.yaml into a malformed one; `dirl config` (load_config, then the tune search-space
# check) must refuse it with a message naming the key. The cases live in tests/helpers/hostile.py; tests/test_hostile_config.py runs them
# through the CLI.


def load_and_check(p):
    """What `dirl config` runs: load_config, then the tune stage's check of tune.search_space (which the config
    checks only as a mapping)."""
    from dirl.train.search_space import check_search_space

    check_search_space(load_config(p).tune.search_space, str(p))


@pytest.mark.parametrize("make, key, words", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS])
def test_hostile_params_file_is_refused_naming_the_key(tmp_path, make, key, words):
    p = hostile_file(tmp_path, make)
    with pytest.raises(ConfigError) as e:
        load_and_check(p)
    msg = str(e.value)
    assert key in msg and words in msg and str(p) in msg, msg
    assert "\n" not in msg  # one line


def test_duplicate_key_names_both_lines(tmp_path):
    p = tmp_path / "params.yaml"
    text = PARAMS.read_text()
    p.write_text(raw_edit(r"^  epochs: .*$", "\\g<0>\n  epochs: 60")(text))
    line = 2 + next(i for i, ln in enumerate(text.splitlines()) if ln.startswith("  epochs:"))  # the second one
    with pytest.raises(ConfigError, match=rf"duplicate key 'train.epochs' at line {line} \(first at line {line - 1}\)"):
        load_config(p)


def test_in_code_dicts_may_stay_partial_and_good_values_pass():
    cfg = config_from_dict(
        {
            "train": {"batch_size": 12, "betas": [0.0, 0.5]},
            "cluster": {"num_workers": 4, "min_workers": 2},
            "mlflow": {"tracking_uri": "postgresql+psycopg2://u@db/mlflow"},
        }
    )
    assert cfg.train.batch_size == 12 and cfg.mlflow.tracking_uri.startswith("postgresql")
    for uri in (
        "",
        "file:///tmp/mlruns",
        "sqlite:///m.db",
        "http://h:5000",
        "https://h",
        "databricks",
        "databricks://profile",
        "mysql://u@h/db",
        "mssql://u@h/db",
    ):
        assert config_from_dict({"mlflow": {"tracking_uri": uri}}).mlflow.tracking_uri == uri
    with pytest.raises(ConfigError, match="train.lr"):
        config_from_dict({"train": {"lr": float("nan")}})


def test_tune_stage_and_dirl_config_share_the_search_space_check():
    """One check of tune.search_space (dirl/train/search_space.py): the tune stage's plan, its pre-run check and
    `dirl config` all call it."""
    import inspect

    import dirl.cli
    import dirl.train.search
    import dirl.train.search_space

    assert dirl.train.search.check_search_space is dirl.train.search_space.check_search_space
    assert "check_search_space(cfg.tune.search_space" in inspect.getsource(dirl.cli.cmd_config)
