"""``loraship <command>``: one table of commands; each command's options are a settings model (its flags
and their help come from it, ``flags.py``) and its function's docstring is its help.

Exit codes: 0 done, 1 a failed verdict or step, 2 bad input, 130 interrupted (``loraship.core.errors``).
"""

from __future__ import annotations

import argparse
import sys

from ..core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, LorashipError


def commands():
    """The command table, in the order ``--help`` lists it."""
    from . import quality, serving, shipping, training

    return [*serving.COMMANDS, *training.COMMANDS, *quality.COMMANDS, *shipping.COMMANDS, *serving.LAST]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraship", description="Train, evaluate, serve and ship LoRA adapters on DJL Serving."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands():
        command.add_to(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "action_", None) or getattr(args, "command_", None)
    if command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return command(args)
    except LorashipError as exc:
        print(f"loraship {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"loraship {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
