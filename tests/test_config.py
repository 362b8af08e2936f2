"""Config loading: the real params.yaml validates, and every kind of mistake names its key."""

import re
from pathlib import Path

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


def test_every_profile_validates():
    from pathlib import Path

    profiles = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "iharmony4-gpu"}
    for p in profiles:
        load_config(p)


# ----------------------------------------------------------------------------- hostile params files
# Each case turns the real params.yaml into a malformed one; `dirl config` (load_config) must refuse it with a
# message naming the key. tests/test_hostile_config.py runs the same cases through the CLI.

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _with(**values):
    """A case maker: the real params.yaml with dotted ``values`` set (``None`` as a value is YAML null)."""
    def make(text: str) -> str:
        data = yaml.safe_load(text)
        for key, value in values.items():
            section, name = key.split(".", 1)
            data[section][name] = value
        return yaml.safe_dump(data, sort_keys=False)
    return make


def _without(section):
    def make(text: str) -> str:
        data = yaml.safe_load(text)
        del data[section]
        return yaml.safe_dump(data, sort_keys=False)
    return make


def _raw(pattern, new):
    """A textual edit of the first line matching ``pattern`` (for what a dict cannot express: duplicate keys,
    YAML's .inf / .nan spellings); ``\\g<0>`` in ``new`` is the matched line."""
    def make(text: str) -> str:
        out, n = re.subn(pattern, new, text, count=1, flags=re.M)
        assert n == 1, pattern
        return out
    return make


HOSTILE_CONFIGS = [  # (id, how to break params.yaml, the key the message must name, more words it must hold)
    ("empty-file", lambda text: "", "train", "every section"),
    ("comments-only", lambda text: "# nothing here\n", "train", "every section"),
    ("missing-section", _without("train"), "train", "missing section"),
    ("missing-mlflow", _without("mlflow"), "mlflow", "missing section"),
    ("duplicate-key", _raw(r"^  epochs: .*$", "\\g<0>\n  epochs: 60"), "train.epochs", "duplicate key"),
    ("duplicate-section", lambda text: text + "\ntrain:\n  epochs: 3\n", "train", "duplicate key"),
    ("lr-inf", _raw(r"^  lr: .*$", "  lr: .inf"), "train.lr", "finite"),
    ("gamma-nan", _raw(r"^  gamma: .*$", "  gamma: .nan"), "train.gamma", "finite"),
    ("lr-string-inf", _with(**{"train.lr": "inf"}), "train.lr", "finite"),
    ("epochs-1e12", _with(**{"train.epochs": 10**12}), "train.epochs", "<= 100000"),
    ("epochs-1e12-text", _raw(r"^  epochs: .*$", "  epochs: 1e12"), "train.epochs", "integer"),
    ("tune-epochs-huge", _with(**{"tune.epochs": 10**9}), "tune.epochs", "<="),
    ("num-samples-huge", _with(**{"tune.num_samples": 10**9}), "tune.num_samples", "<="),
    ("min-above-num-workers", _with(**{"train.num_workers": 2, "train.min_workers": 3}), "train.min_workers",
     "train.num_workers"),
    ("tracking-uri-scheme", _with(**{"mlflow.tracking_uri": "mlfow://host:5000"}), "mlflow.tracking_uri",
     "unknown scheme"),
    ("tracking-uri-path", _with(**{"mlflow.tracking_uri": "mlruns"}), "mlflow.tracking_uri", "no scheme"),
    ("betas-above-1", _with(**{"train.betas": [1.5, 2.0]}), "train.betas", "< 1.0"),
    ("betas-three", _with(**{"train.betas": [0.9, 0.99, 0.999]}), "train.betas", "two numbers"),
    ("milestones-negative", _with(**{"train.milestones": [-5, 10]}), "train.milestones", ">= 1"),
    ("search-space-reversed", _with(**{"tune.search_space": {"lr": {"loguniform": [0.01, 0.001]}}}),
     "tune.search_space.lr", "lower bound"),
    ("search-space-kind", _with(**{"tune.search_space": {"lr": {"normal": [0, 1]}}}), "tune.search_space.lr",
     "not a valid search space"),
    ("search-space-negative-choice", _with(**{"tune.search_space": {"weight_decay": {"choice": [0.0, -1.0]}}}),
     "tune.search_space.weight_decay", ">= 0.0"),
    ("search-space-empty", _with(**{"tune.search_space": {}}), "tune.search_space", "non-empty"),
    ("search-space-epochs", _with(**{"tune.search_space": {"epochs": {"choice": [1, 2]}}}),
     "tune.search_space.epochs", "cannot be searched"),
    ("batch-not-multiple", _with(**{"train.batch_size": 10, "train.num_workers": 4}), "train.batch_size",
     "multiple of train.num_workers"),
    ("seed-negative", _with(**{"train.seed": -1}), "train.seed", ">= 0"),
    ("yaml-syntax", _raw(r"^  betas: .*$", "  betas: [0.9, 0.999"), "at line", "not valid YAML"),
]


def hostile_file(tmp_path: Path, make) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(make(PARAMS.read_text()))
    return p


@pytest.mark.parametrize("make, key, words", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS])
def test_hostile_params_file_is_refused_naming_the_key(tmp_path, make, key, words):
    p = hostile_file(tmp_path, make)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert key in msg and words in msg and str(p) in msg, msg
    assert "\n" not in msg  # one line


def test_duplicate_key_names_both_lines(tmp_path):
    p = tmp_path / "params.yaml"
    text = PARAMS.read_text()
    p.write_text(_raw(r"^  epochs: .*$", "\\g<0>\n  epochs: 60")(text))
    line = 2 + next(i for i, ln in enumerate(text.splitlines()) if ln.startswith("  epochs:"))  # the second one
    with pytest.raises(ConfigError, match=rf"duplicate key 'train.epochs' at line {line} \(first at line {line - 1}\)"):
        load_config(p)


def test_in_code_dicts_may_stay_partial_and_good_values_pass():
    cfg = config_from_dict({"train": {"batch_size": 12, "num_workers": 4, "min_workers": 2, "betas": [0.0, 0.5]},
                            "mlflow": {"tracking_uri": "postgresql+psycopg2://u@db/mlflow"}})
    assert cfg.train.batch_size == 12 and cfg.mlflow.tracking_uri.startswith("postgresql")
    for uri in ("", "file:///tmp/mlruns", "sqlite:///m.db", "http://h:5000", "https://h", "databricks",
                "databricks://profile", "mysql://u@h/db", "mssql://u@h/db"):
        assert config_from_dict({"mlflow": {"tracking_uri": uri}}).mlflow.tracking_uri == uri
    with pytest.raises(ConfigError, match="train.lr"):
        config_from_dict({"train": {"lr": float("nan")}})


def test_tune_imports_the_search_space_validation_from_config():
    import dirl.config
    import dirl.train.tune

    assert dirl.train.tune.parse_search_space is dirl.config.parse_search_space
    assert dirl.train.tune.canonical_key is dirl.config.canonical_key
