"""What a stage may read: :func:`restrict` hands a stage a config in which only the params it declares (its
``PARAMS``, which are its params in dvc.yaml) and the machine sections can be read; any other param is an
:class:`Undeclared` whose use raises a ConfigError naming the key to declare."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dirl.config.fields import ConfigError

if TYPE_CHECKING:
    from dirl.config.sections import Config

MACHINE_SECTIONS = ("cluster", "mlflow")  # where a stage runs and records: not DVC params of any stage
UNDECLARED = "__undeclared__"  # Config.to_dict's entry for what a restricted config leaves out


class Undeclared:
    """The value of a param that a stage did not declare (:func:`restrict`): any use raises ConfigError naming the
    key and the line to add, so a stage cannot depend on a param that dvc.yaml does not list for it."""

    def __init__(self, key: str, stage: str):
        self.key, self.stage = key, stage

    def _fail(self, *args, **kwargs):
        raise ConfigError(
            f"stage {self.stage} reads {self.key}, which it does not declare: add {self.key!r} to PARAMS "
            f"in dirl/stages/{self.stage}.py, then `python pipeline/dvcyaml.py --write` (dvc.yaml)"
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    def __deepcopy__(self, memo):
        return self  # dataclasses.asdict copies it; Config.to_dict then leaves it out

    __bool__ = __str__ = __format__ = __iter__ = __len__ = __eq__ = __hash__ = __lt__ = __gt__ = __le__ = __ge__ = _fail
    __add__ = __sub__ = __mul__ = __truediv__ = __mod__ = __contains__ = __getitem__ = __float__ = __int__ = _fail

    def __repr__(self) -> str:
        return f"<undeclared {self.key} in stage {self.stage}>"


def undeclared_keys(cfg: Any) -> list[str]:
    """The sections and ``section.key``s that :func:`restrict` made unreadable in ``cfg``."""
    out = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if isinstance(section, Undeclared):
            out.append(f.name)
        elif dataclasses.is_dataclass(section):
            out += [
                f"{f.name}.{g.name}"
                for g in dataclasses.fields(section)
                if isinstance(getattr(section, g.name), Undeclared)
            ]
    return out


def undeclared_stage(cfg: Any) -> str:
    """The stage that ``cfg`` was restricted for ("" when it was not)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Undeclared):
            return v.stage
        for g in dataclasses.fields(v) if dataclasses.is_dataclass(v) else ():
            if isinstance(getattr(v, g.name), Undeclared):
                return getattr(v, g.name).stage
    return ""


def restrict(cfg: Config, params: Sequence[str], stage: str) -> Config:
    """A copy of ``cfg`` in which only ``params`` (sections, or ``section.key``) and the machine sections can be read:
    every other param becomes :class:`Undeclared`. What a stage declares is what dvc.yaml lists as its params."""
    sections = [f.name for f in dataclasses.fields(cfg)]
    allowed = set(params)
    for p in allowed:
        section, _, name = p.partition(".")
        if section not in sections or (
            name and name not in {f.name for f in dataclasses.fields(getattr(cfg, section))}
        ):
            raise ConfigError(f"dirl/stages/{stage}.py: PARAMS names {p!r}, which is not a params.yaml key")
    out = copy.copy(cfg)
    for section in sections:
        if section in allowed or section in MACHINE_SECTIONS:
            continue
        keys = {p.split(".", 1)[1] for p in allowed if p.startswith(section + ".")}
        if not keys:
            object.__setattr__(out, section, Undeclared(section, stage))
            continue
        part = copy.copy(getattr(cfg, section))
        for f in dataclasses.fields(part):
            if f.name not in keys:
                object.__setattr__(part, f.name, Undeclared(f"{section}.{f.name}", stage))
        object.__setattr__(out, section, part)
    return out
