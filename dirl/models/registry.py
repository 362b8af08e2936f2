"""A timm-like model registry: `@register_model(name)`, `list_models()`, `create_model(name, **overrides)`.

A registered factory is a function whose keyword arguments are the model's options, e.g.

    @register_model("unet")
    def unet(pretrained: str | None = None, pretrained_sha256: str | None = None) -> nn.Module: ...

`create_model` checks the overrides against the factory's signature before calling it, so a misspelt option
fails with a TypeError naming it and listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a model factory under `name` (names are unique)."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__module__}")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, object]:
    """The options a model accepts with their defaults (`inspect.Parameter.empty` when required)."""
    return {p.name: p.default for p in inspect.signature(_factory(name)).parameters.values()}


def _factory(name: str) -> ModelFactory:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **overrides: object) -> nn.Module:
    """Build the model registered as `name` with its default options, updated by `overrides`.

    Unknown name -> ValueError listing the registered names; unknown option -> TypeError naming it.
    """
    factory = _factory(name)
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in overrides if k not in params]
    if unknown and not accepts_any:
        raise TypeError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(params) or '(none)'}"
        )
    return factory(**overrides)
