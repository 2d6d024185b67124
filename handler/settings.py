"""One way to declare settings: a pydantic model per settings file, every problem reported at once.

Serving options, the training config, the gate policy and bench options are :class:`Settings`
models: typed fields with their help text as the field's docstring (the CLI builds its flags from
them), validated by pydantic (which djl_python itself uses). :func:`validate` turns a
``ValidationError`` into one message that names each bad value by its dotted key, worded the same
way everywhere. It lives at the bottom layer so that the handler, which ships alone in a model dir,
can use it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

S = TypeVar("S", bound="Settings")


class Settings(BaseModel):
    """A settings model: unknown keys are errors, assignments are validated, docstrings are help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line, in its ``Annotated`` metadata (loraship.cli.flags
    builds the flags; every attribute is optional)."""

    name: str | None = None
    """The flag, when not ``--field-name``; ``--no-x`` for a field that defaults to true."""
    metavar: str | None = None
    csv: bool = False
    """A list given as ``a,b,c``."""
    repeat: bool = False
    """A list given by repeating the flag."""
    positional: bool = False
    group: str | None = None
    """The heading it is listed under in ``--help``."""
    hidden: bool = False
    """Not a flag: set by the command itself."""


def _message(error: dict) -> str:
    """pydantic's error, in the project's words (``must be >= 1``, ``unknown key``, ...)."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {got!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {got!r}"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} items"
    if kind == "finite_number":
        return f"must be a finite number, got {got!r}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {got!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {got!r}"
    if kind in ("string_type",):
        return f"must be a string, got {got!r}"
    if kind == "literal_error":  # the empty choice means "unset": not offered
        choices = [c for c in re.findall(r"'([^']*)'", str(ctx.get("expected", ""))) if c]
        return f"must be one of {', '.join(choices)}, got {got!r}"
    if kind in ("dict_type", "model_type"):
        return f"must be a mapping, got {type(got).__name__}"
    if kind in ("list_type",):
        return f"must be a list, got {type(got).__name__}"
    message = error["msg"]
    # Our own validators raise ValueError("..."); pydantic prefixes it.
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def problems(err: ValidationError, prefix: str = "") -> list[str]:
    """``dotted.key: message`` for every problem in ``err`` (``prefix`` is put before each key)."""
    out = []
    for error in err.errors():
        loc = ".".join(str(part) for part in error["loc"] if part != "__root__")
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        out.append(f"{key}: {_message(error)}" if key else _message(error))
    return out


def validate(
    model: type[S], data: Any, *, error: type[Exception] = ValueError, what: str = "settings", prefix: str = ""
) -> S:
    """``model`` from ``data``, or ``error("invalid WHAT: KEY: PROBLEM; ...")`` listing every problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"invalid {what}: " + "; ".join(problems(exc, prefix))) from None
