"""The ``dirl`` console script's surface: every subcommand explains itself, ``-v`` only where Ray runs, and a
command's JSON outcome stays in its file unless asked for."""

from __future__ import annotations

import argparse
import json

import pytest

from dirl import cli
from helpers.paths import PARAMS

RAY_COMMANDS = {"tune", "train", "data preprocess", "data synthesize"}


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_subparsers(sub, f"{prefix}{name} "))
    return found


def test_every_subcommand_has_a_description_and_v_only_where_ray_runs():
    subs = _subparsers(cli.build_parser())
    assert {
        "config",
        "data",
        "data ingest",
        "data show",
        "tune",
        "train",
        "evaluate",
        "register",
        "promote",
        "rollback",
        "compare",
        "predict",
        "weights",
        "summary",
    } <= set(subs)
    for name, p in subs.items():
        assert p.description and len(p.description) > 30, f"`dirl {name} --help` has no description"
        help_text = p.format_help()
        if name == "data":
            continue  # the group: its actions carry the options
        assert ("--verbose" in help_text) == (name in RAY_COMMANDS), name


def test_promote_help_says_what_better_means():
    text = " ".join(_subparsers(cli.build_parser())["promote"].format_help().split())
    assert "promote.metric" in text and "promote.margin" in text and "test set" in text
    assert "-v" not in text.split()


@pytest.mark.parametrize("verbose", [False, True])
def test_outcome_is_one_line_unless_verbose(verbose, capsys):
    args = argparse.Namespace(verbose=verbose)
    cli._outcome(args, {"status": "ok", "n": 3}, "stage: outcome in results/stage/summary.json")
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    assert first == "stage: outcome in results/stage/summary.json"
    assert (json.loads(rest) == {"status": "ok", "n": 3}) if verbose else rest == ""


def test_promote_prints_its_decision_not_json(monkeypatch, capsys):
    import dirl.lifecycle.release as release

    monkeypatch.setattr(
        release,
        "promote",
        lambda cfg, force=False, reason="": {
            "status": "promoted",
            "name": "dirl",
            "champion": "3",
            "previous": "2",
            "metric": "IoU",
            "forced": False,
        },
    )
    assert cli.main(["promote", "--params", str(PARAMS)]) == 0
    assert capsys.readouterr().out.splitlines() == ["promote: promoted: @champion is dirl v3 (was v2)"]
