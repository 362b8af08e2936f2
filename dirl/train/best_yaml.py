"""The tuned values: what the tune stage writes to ``results/tune/best.yaml`` and how train reads it back.

A tuned key (``dirl.config.TUNED_DEFAULTS``: train.lr, train.weight_decay, train.lam) left null in params.yaml
means "use the tune stage's value". :func:`resolve_tuned` fills such keys from best.yaml (keys tune searched) or
the defaults; a number in params.yaml (or ``dvc exp run -S``) always wins. :func:`write_best_yaml` writes the file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dirl.config import TUNED_DEFAULTS, Config, ConfigError, ModelConfig, TrainConfig, config_from_dict
from dirl.io import write_text_atomic
from dirl.models.resnet import resolve_backbone


def _read_tune_file(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """``({"train.lr": .., ..}, searched)`` from a hyperparameter file; ``searched`` is None when it does not say.

    Accepted layouts: ``{train: {lr: ..}, model: {..}}``, dotted ``{"train.lr": ..}``, or bare keys of the
    ``train`` (or ``model``) section ``{lr: .., weight_decay: ..}``; a ``config``/``params`` wrapper is unwrapped.
    Keys that are neither are ignored (tune writes its metrics beside them), and so are null values. The tune
    stage's ``tune`` block says which keys it searched (``searched``) or that it was ``skipped``.
    """
    try:
        best = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{path}: not valid YAML ({e}); rerun the tune stage or set train.use_tune_best false"
        ) from None
    if not isinstance(best, dict):
        raise ConfigError(f"{path}: expected a mapping of hyperparameters, got {type(best).__name__}")
    tune_block = best.get("tune")
    info: dict = tune_block if isinstance(tune_block, dict) else {}
    searched = info.get("searched")
    searched = [str(k) for k in searched] if isinstance(searched, list) else ([] if info.get("skipped") else None)
    for wrapper in ("config", "params", "best_config", "hyperparameters"):
        if isinstance(best.get(wrapper), dict):
            best = best[wrapper]
            break
    fields = {
        "train": {f.name for f in dataclasses.fields(TrainConfig)},
        "model": {f.name for f in dataclasses.fields(ModelConfig)},
    }
    values: dict[str, Any] = {}
    for key, value in best.items():
        if isinstance(value, dict) and key in fields:
            values.update({f"{key}.{k}": v for k, v in value.items() if k in fields[key]})
        elif "." in str(key) and str(key).split(".", 1)[0] in fields:
            section, k = str(key).split(".", 1)
            if k in fields[section]:
                values[str(key)] = value
        elif key in fields["train"]:
            values[f"train.{key}"] = value
        elif key in fields["model"]:
            values[f"model.{key}"] = value
    return {k: v for k, v in values.items() if v is not None}, searched


def resolve_tuned(cfg: Config, best_yaml_path: str | os.PathLike | None) -> tuple[Config, dict[str, str]]:
    """Give every tuned key (``TUNED_DEFAULTS``: train.lr, weight_decay, lam) a number; return (cfg, sources).

    A number in ``cfg`` (params.yaml, ``dvc exp run -S``) is kept: source ``"params.yaml"``. A null is filled
    from ``best_yaml_path`` (the tune stage's ``best.yaml``) when that file holds a value the tune stage
    searched (source ``"tune"``), else from ``TUNED_DEFAULTS`` (``"default"``): tune disabled or skipped, the key
    not searched, no file, ``best_yaml_path`` None, or ``train.use_tune_best`` false (best.yaml ignored). A file
    without a ``tune`` block (hand-written) counts as searched. The input config is not changed; a bad value in
    the file raises :class:`ConfigError` naming the file and the key.
    """
    path = Path(best_yaml_path) if best_yaml_path else None
    use_file = cfg.train.use_tune_best and path is not None and path.is_file()
    best, searched = _read_tune_file(path) if use_file and path is not None else ({}, [])
    data = cfg.to_dict()
    sources: dict[str, str] = {}
    from_file = False
    for key, default in TUNED_DEFAULTS.items():
        section, name = key.split(".", 1)
        if data[section][name] is not None:
            sources[key] = "params.yaml"
        elif key in best and (searched is None or key in searched):
            data[section][name], sources[key], from_file = best[key], "tune", True
        else:
            data[section][name], sources[key] = default, "default"
    return config_from_dict(data, str(path) if from_file else "TUNED_DEFAULTS"), sources


def current_values(cfg: Config, keys: Sequence[str]) -> dict[str, Any]:
    """``{"train.lr": cfg.train.lr, ...}`` for dotted keys."""
    return {k: getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in keys}


def nest(values: dict[str, Any]) -> dict[str, dict]:
    """``{"train.lr": 1e-4}`` -> ``{"train": {"lr": 1e-4}}`` (best.yaml's layout: DVC reads ``train.lr``)."""
    out: dict[str, dict] = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def train_values(cfg: Config, best: dict[str, Any]) -> dict[str, Any]:
    """Every tuned key with the value the train stage will use: ``best`` (searched), else params.yaml or default."""
    return {**current_values(resolve_tuned(cfg, None)[0], list(TUNED_DEFAULTS)), **best}


def write_best_yaml(path: Path, values: dict[str, Any], info: dict) -> Path:
    """``{train: {..}, tune: info}`` with a header; the train stage reads the values of the searched keys."""
    body = {**nest(values), "tune": info}
    head = (
        "# Written by the tune stage (dirl tune): every tuned key with the value the train stage uses. A key\n"
        "# that params.yaml leaves null takes the value here when tune searched it (tune.searched), else its\n"
        "# default; a number in params.yaml wins. dvc.yaml declares these keys as params of train.\n"
    )
    write_text_atomic(path, head + yaml.safe_dump(body, sort_keys=False))
    return path


def with_backbone_resolved(cfg: Config, root: str | os.PathLike) -> Config:
    """``cfg`` with ``model.pretrained`` made absolute against the workspace (see ``resolve_backbone``)."""
    pretrained = resolve_backbone(cfg.model.pretrained, root)
    if pretrained == cfg.model.pretrained:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=pretrained))
