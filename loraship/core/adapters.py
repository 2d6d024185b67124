"""``NAME=DIR`` adapter arguments (as ``build``, ``eval`` and ``gate`` take them) and ``KEY=VALUE`` pairs."""

from __future__ import annotations

import re
from pathlib import Path

from loraship.handler.adapters import NAME

from .errors import LorashipError

BASE = "__base__"


class AdapterArgError(LorashipError, ValueError):
    """A malformed ``NAME=DIR`` (a ValueError too, so that a settings model reports it with the rest)."""


def parse_adapter_pairs(values: list[str], *, check_folders: bool = True) -> dict[str, Path]:
    """``NAME=DIR`` pairs -> {name: resolved folder}; names as the handler accepts them, each once."""
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise AdapterArgError(f"--adapter takes NAME=DIR, got {value!r}")
        if not NAME.match(name) or name == BASE:
            raise AdapterArgError(f"adapter name {name!r} must be 1-64 of letters, digits, '.', '_', '-'")
        if name in adapters:
            raise AdapterArgError(f"adapter name {name!r} is given twice")
        path = Path(folder).expanduser()
        if check_folders and not path.joinpath("adapter_config.json").is_file():
            raise AdapterArgError(f"adapter folder {folder!r} has no adapter_config.json")
        adapters[name] = path.resolve()
    return adapters


def name_from_folder(folder: str | Path) -> str:
    """An adapter name from a folder's name: the characters a name allows, at most 64."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(folder).resolve().name).lstrip("._-")[:64]
    return name or "adapter"


def key_values(values: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings -> {key: value}; a string without ``=`` or a key is refused."""
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise AdapterArgError(f"takes KEY=VALUE, got {value!r}")
        pairs[key] = val
    return pairs
