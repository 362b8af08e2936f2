"""Malformed params.yaml cases: tests/test_config.py feeds them to ``load_config`` (and the search-space cases on to
``dirl.train.search_space.check_search_space``, as ``dirl config`` does), tests/test_hostile_config.py to
``dirl config``; each must be refused with a message naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from helpers.paths import PARAMS


def with_values(**values):
    """A case maker: the real params.yaml with dotted ``values`` set (``None`` as a value is YAML null)."""

    def make(text: str) -> str:
        data = yaml.safe_load(text)
        for key, value in values.items():
            section, name = key.split(".", 1)
            data[section][name] = value
        return yaml.safe_dump(data, sort_keys=False)

    return make


def without_section(section):
    def make(text: str) -> str:
        data = yaml.safe_load(text)
        del data[section]
        return yaml.safe_dump(data, sort_keys=False)

    return make


def raw_edit(pattern, new):
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
    ("missing-section", without_section("train"), "train", "missing section"),
    ("missing-mlflow", without_section("mlflow"), "mlflow", "missing section"),
    ("duplicate-key", raw_edit(r"^  epochs: .*$", "\\g<0>\n  epochs: 60"), "train.epochs", "duplicate key"),
    ("duplicate-section", lambda text: text + "\ntrain:\n  epochs: 3\n", "train", "duplicate key"),
    ("lr-inf", raw_edit(r"^  lr: .*$", "  lr: .inf"), "train.lr", "finite"),
    ("gamma-nan", raw_edit(r"^  gamma: .*$", "  gamma: .nan"), "train.gamma", "finite"),
    ("lr-string-inf", with_values(**{"train.lr": "inf"}), "train.lr", "finite"),
    ("epochs-1e12", with_values(**{"train.epochs": 10**12}), "train.epochs", "<= 100000"),
    ("epochs-1e12-text", raw_edit(r"^  epochs: .*$", "  epochs: 1e12"), "train.epochs", "integer"),
    ("tune-epochs-huge", with_values(**{"tune.epochs": 10**9}), "tune.epochs", "<="),
    ("num-samples-huge", with_values(**{"tune.num_samples": 10**9}), "tune.num_samples", "<="),
    (
        "min-above-num-workers",
        with_values(**{"cluster.num_workers": 2, "cluster.min_workers": 3}),
        "cluster.min_workers",
        "cluster.num_workers",
    ),
    (
        "tracking-uri-scheme",
        with_values(**{"mlflow.tracking_uri": "mlfow://host:5000"}),
        "mlflow.tracking_uri",
        "unknown scheme",
    ),
    ("tracking-uri-path", with_values(**{"mlflow.tracking_uri": "mlruns"}), "mlflow.tracking_uri", "no scheme"),
    ("betas-above-1", with_values(**{"train.betas": [1.5, 2.0]}), "train.betas", "< 1.0"),
    ("betas-three", with_values(**{"train.betas": [0.9, 0.99, 0.999]}), "train.betas", "two numbers"),
    ("milestones-negative", with_values(**{"train.milestones": [-5, 10]}), "train.milestones", ">= 1"),
    (
        "search-space-reversed",
        with_values(**{"tune.search_space": {"lr": {"loguniform": [0.01, 0.001]}}}),
        "tune.search_space.lr",
        "lower bound",
    ),
    (
        "search-space-kind",
        with_values(**{"tune.search_space": {"lr": {"normal": [0, 1]}}}),
        "tune.search_space.lr",
        "not a valid search space",
    ),
    (
        "search-space-negative-choice",
        with_values(**{"tune.search_space": {"weight_decay": {"choice": [0.0, -1.0]}}}),
        "tune.search_space.weight_decay",
        ">= 0.0",
    ),
    ("search-space-empty", with_values(**{"tune.search_space": {}}), "tune.search_space", "non-empty"),
    (
        "search-space-epochs",
        with_values(**{"tune.search_space": {"epochs": {"choice": [1, 2]}}}),
        "tune.search_space.epochs",
        "cannot be searched",
    ),
    (
        "batch-not-multiple",
        with_values(**{"train.batch_size": 10, "cluster.num_workers": 4}),
        "train.batch_size",
        "multiple of cluster.num_workers",
    ),
    ("seed-negative", with_values(**{"train.seed": -1}), "train.seed", ">= 0"),
    ("yaml-syntax", raw_edit(r"^  betas: .*$", "  betas: [0.9, 0.999"), "at line", "not valid YAML"),
]


def hostile_file(tmp_path: Path, make) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(make(PARAMS.read_text()))
    return p
