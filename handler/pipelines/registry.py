"""Pipeline registry: built-in names, ``module:Class`` paths and the ``loraship.pipelines`` entry points."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Pipeline

_REGISTRY: dict[str, type] = {}
ENTRY_POINT_GROUP = "loraship.pipelines"


def register_pipeline(name: str):
    """Class decorator: make a pipeline class available under ``name``."""

    def wrap(cls):
        _check(cls, name)
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"pipeline name {name!r} is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def known_pipelines() -> list[str]:
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _check(obj, spec: str) -> type[Pipeline]:
    if not (isinstance(obj, type) and issubclass(obj, Pipeline)):
        raise ConfigError(
            f"pipeline {spec!r} is {obj!r}, not a subclass of handler.pipelines.Pipeline: "
            "subclass it (its hooks default to pass-through)"
        )
    return obj


def get_pipeline(spec: str) -> type[Pipeline]:
    """Resolve a built-in name, an entry-point name or a ``module:Class`` path to a Pipeline subclass."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            return _check(getattr(importlib.import_module(module_name), attr), spec)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load pipeline {spec!r}: {exc}") from exc
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _check(ep.load(), spec)
    raise ConfigError(f"unknown pipeline {spec!r}; known pipelines: {', '.join(known_pipelines())}")
