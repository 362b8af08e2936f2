"""``tune.search_space``: which keys a search may set and how each is drawn. The config checks only that the
section's value is a mapping; :func:`check_search_space` judges its entries, and the tune stage and ``dirl config``
run it before any work, so a bad entry fails in one line naming the params file and the dotted key::

    params.yaml: tune.search_space.lr = {'normal': [0, 1]} is not a valid search space: expected ...

A key is ``train.<field>``, ``model.<field>`` or a bare field name (:func:`canonical_key`); only the tuned keys
(``dirl.config.TUNED_DEFAULTS``) may be searched, and every value a search may draw must be a valid value of its
key (type and bounds, as params.yaml would take it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dirl.config import TUNED_DEFAULTS, ConfigError, ModelConfig, TrainConfig, check_field

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
NOT_SEARCHABLE = {
    "train.epochs": "every trial trains tune.epochs epochs",
    "train.use_tune_best": "trials never read best.yaml",
    "train.val_every": "trials validate after every epoch",
}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def canonical_key(key: str, where: str = "tune.search_space") -> str:
    """``lr`` -> ``train.lr``, ``input_size`` -> ``model.input_size``, ``model.name`` stays; else ConfigError."""
    key = str(key)
    if "." in key:
        section, name = key.split(".", 1)
        fields = {"train": TRAIN_FIELDS, "model": MODEL_FIELDS}.get(section)
        if fields is None or name not in fields:
            raise ConfigError(
                f"{where}.{key}: unknown key: use train.<field> or model.<field> "
                f"(train fields: {', '.join(sorted(TRAIN_FIELDS))}; "
                f"model fields: {', '.join(sorted(MODEL_FIELDS))})"
            )
        full = key
    elif key in MODEL_FIELDS:
        full = f"model.{key}"
    elif key in TRAIN_FIELDS:
        full = f"train.{key}"
    else:
        raise ConfigError(
            f"{where}.{key}: unknown key: a bare key must be a train field "
            f"({', '.join(sorted(TRAIN_FIELDS))}) or a model field ({', '.join(sorted(MODEL_FIELDS))})"
        )
    if full in NOT_SEARCHABLE:
        raise ConfigError(f"{where}.{key}: {full} cannot be searched ({NOT_SEARCHABLE[full]})")
    return full


def _number(v: Any) -> bool:
    if isinstance(v, str):  # PyYAML reads 3e-5 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_search_space(space: dict, where: str = "tune.search_space") -> dict[str, tuple[str, list]]:
    """The form of a search space; return ``{canonical key: (kind, args)}``.

    Raises :class:`ConfigError` naming the key and the accepted forms for a malformed entry.
    """
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{where} must be a non-empty mapping of key -> {{kind: args}} (kinds: {', '.join(KINDS)}), got {space!r}"
        )
    forms = (
        "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi]} (hi excluded), "
        "{choice: [v1, v2, ...]} or {grid: [v1, v2, ...]}"
    )
    parsed: dict[str, tuple[str, list]] = {}
    for key, spec in space.items():
        full = canonical_key(key, where)
        if full in parsed:
            raise ConfigError(f"{where}.{key}: {full} is given twice (as a bare and a dotted key)")
        bad = ConfigError(f"{where}.{key} = {spec!r} is not a valid search space: expected {forms}")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise bad
        ((kind, args),) = spec.items()
        if kind not in KINDS or not isinstance(args, (list, tuple)) or not args:
            raise bad
        args = list(args)
        if kind in ("loguniform", "uniform", "randint"):
            if len(args) != 2 or not all(_number(a) for a in args):
                raise bad
            lo, hi = (float(a) for a in args) if kind != "randint" else args
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError(f"{where}.{key} = {spec!r}: randint bounds must be integers")
            if not lo < hi:
                raise ConfigError(f"{where}.{key} = {spec!r}: the lower bound must be below the upper bound")
            if kind == "loguniform" and lo <= 0:
                raise ConfigError(f"{where}.{key} = {spec!r}: loguniform bounds must be > 0")
            args = [lo, hi]
        parsed[full] = (kind, args)
    return parsed


def _check_searched_values(full: str, kind: str, args: list, where: str = "tune.search_space") -> None:
    """Every value a search may draw for ``full`` must be a valid value of that key (type and range)."""
    section, name = full.split(".", 1)
    cls = {"train": TrainConfig, "model": ModelConfig}[section]
    for i, v in enumerate(args):
        check_field(cls, name, v, f"{where}.{name}.{kind}[{i}]")


def check_search_space(space: Any, src: str = "", where: str = "tune.search_space") -> dict[str, tuple[str, list]]:
    """Judge a whole search space: only tuned keys (``TUNED_DEFAULTS``), each well formed (:func:`parse_search_space`)
    and every value it may draw valid for its key. Returns the parsed space; a ConfigError names ``src`` (the params
    file, as :func:`dirl.config.params_source` spells it) and the dotted key."""
    try:
        for key in space if isinstance(space, dict) else ():
            full = str(key)
            if "." not in full:  # a bare key names a model field when ModelConfig has it, else a train field
                full = f"{'model' if full in MODEL_FIELDS else 'train'}.{full}"
            if full not in TUNED_DEFAULTS:
                raise ConfigError(
                    f"{where}.{key}: {full} cannot be searched: the searchable keys are "
                    f"{', '.join(TUNED_DEFAULTS)} (a tuned key is null in params.yaml, meaning 'use the tune "
                    f"stage's value'; see TUNED_DEFAULTS in dirl/config/sections.py)"
                )
        parsed = parse_search_space(space, where)
        for full, (kind, args) in parsed.items():
            _check_searched_values(full, kind, args, where)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}" if src else str(e)) from None
    return parsed
