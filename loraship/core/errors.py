"""One error base for everything a command can refuse or fail at, carrying its exit code.

``loraship`` exits 0 when a command succeeded, 1 when it ran and its verdict failed (a gate that
fails, a rollout rolled back, a job that failed), 2 for bad input (a flag, a config, a file that
is not what it should be: nothing was done), 130 when interrupted. Each module's errors subclass
:class:`LorashipError` (or :class:`Failed`), and the CLI prints ``loraship CMD: error: MESSAGE``
and exits with the error's code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class LorashipError(Exception):
    """Bad input: nothing was done (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class Failed(LorashipError):
    """It ran and failed (exit 1)."""

    exit_code = EXIT_FAILED


class UsageError(LorashipError):
    """A flag's value is malformed."""
