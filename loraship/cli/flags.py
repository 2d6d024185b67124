"""Command-line flags built from a settings model, so each option is declared once.

A command's options are the fields of a :class:`~loraship.handler.settings.Settings` model: the
field's type gives the flag's parsing, its docstring the help, and an optional
:class:`~loraship.handler.settings.Flag` in its ``Annotated`` metadata how it is spelled (as litgpt
builds its flags from signatures). Values reach pydantic as given, so a bad value is reported with
every other one, named by its flag.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from ..core.errors import UsageError
from ..handler.settings import Flag, Settings, problems


def _flag(field) -> Flag:
    return next((m for m in field.metadata if isinstance(m, Flag)), Flag())


def _inner(annotation) -> Any:
    """``X`` for ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def flag_name(model: type[Settings], name: str) -> str:
    spec = _flag(model.model_fields[name])
    if spec.positional:
        return name.upper()
    return spec.name or "--" + name.replace("_", "-")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_flags(parser: argparse.ArgumentParser, model: type[Settings], require: bool = True) -> None:
    """Add one flag per field of ``model``; unset flags leave the field's default to the model.
    ``require=False`` leaves required fields to the model's check (a parser with sub-commands)."""
    groups: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        spec = _flag(field)
        if spec.hidden:
            continue
        target = parser
        if spec.group:
            target = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        kind = _inner(field.annotation)
        help_text = (field.description or "").strip()
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        shown = "default" in help_text  # the docstring says it better than the value would
        if default not in (None, [], {}, "") and kind is not bool and typing.get_origin(kind) is not dict and not shown:
            help_text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%")}
        if spec.metavar:
            kwargs["metavar"] = spec.metavar
        if spec.positional:
            target.add_argument(name, **kwargs)
            continue
        kwargs.update(dest=name, default=argparse.SUPPRESS)
        if kind is bool:
            kwargs["action"] = "store_false" if default is True else "store_true"
        elif typing.get_origin(kind) is Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif spec.repeat:  # a list, or a mapping its validator builds from NAME=VALUE strings
            kwargs["action"] = "append"
        elif typing.get_origin(kind) is list and spec.csv:
            kwargs["type"] = _csv
        kwargs["required"] = require and field.is_required()
        target.add_argument(flag_name(model, name), **kwargs)


def from_args(model: type[Settings], args: argparse.Namespace, **values: Any):
    """``model`` from the parsed flags (plus ``values`` the command sets); every bad flag at once."""
    flags = {name for name, field in model.model_fields.items() if not _flag(field).hidden}
    given = {k: v for k, v in vars(args).items() if k in flags}
    try:
        return model.model_validate({**given, **values})
    except ValidationError as exc:
        named = []
        for line in problems(exc):
            key, _, message = line.partition(": ")
            field = key.split(".")[0]
            if field not in model.model_fields:
                named.append(line)
            else:  # "--slo takes KEY=MS pairs" reads as a sentence; other messages follow a colon
                named.append(f"{flag_name(model, field)}{' ' if message.startswith('takes ') else ': '}{message}")
        raise UsageError("; ".join(named)) from None


def as_command_line(prog: list[str], model: type[Settings], settings: Settings) -> list[str]:
    """The flags that give ``settings`` (defaults left out): what a run records of how it was started."""
    cmd = list(prog)
    for name, field in model.model_fields.items():
        spec, value = _flag(field), getattr(settings, name)
        if spec.hidden or value is None or value == field.get_default(call_default_factory=True):
            continue
        if spec.positional:
            cmd.append(str(value))
        elif isinstance(value, bool):
            cmd.append(flag_name(model, name))
        elif isinstance(value, list) and spec.repeat:
            for item in value:
                cmd += [flag_name(model, name), str(item)]
        elif isinstance(value, list):
            cmd += [flag_name(model, name), ",".join(map(str, value))]
        elif isinstance(value, dict):
            cmd += [
                flag_name(model, name),
                ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()),
            ]
        else:
            cmd += [flag_name(model, name), str(value)]
    return cmd


@dataclass(frozen=True)
class Command:
    """One ``loraship`` command: its options model (flags built from it) and what runs it.

    ``run`` gets the validated options (the raw arguments when there is no model); its docstring is
    the command's help. ``require=False`` leaves required fields to the model's check, for a command
    whose sub-commands do not need them.
    """

    name: str
    run: Callable[..., int]
    options: type[Settings] | None = None
    require: bool = True
    subcommands: tuple[Command, ...] = ()

    def add_to(self, sub, dest: str = "command_") -> None:
        doc = " ".join((self.run.__doc__ or "").split())
        parser = sub.add_parser(self.name, help=doc, description=doc)
        if self.options is not None:
            add_flags(parser, self.options, require=self.require)
        if self.subcommands:
            actions = parser.add_subparsers(dest=f"{self.name}_action", metavar="ACTION")
            for command in self.subcommands:
                command.add_to(actions, dest="action_")
        parser.set_defaults(**{dest: self})

    def __call__(self, args: argparse.Namespace) -> int:
        if self.options is None:
            return self.run(args)
        return self.run(from_args(self.options, args))
