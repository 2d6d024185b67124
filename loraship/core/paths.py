"""Where loraship keeps things: a per-user cache, the DJL runtime, and the source checkout if there is one.

Nothing here points next to the installed code for writing: runs go under the current directory
(or an option), caches under the user's cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

# loraship/core/paths.py -> the folder that holds loraship/, handler/, setup.cfg in a source checkout.
_TREE = Path(__file__).resolve().parents[2]


def source_checkout() -> Path | None:
    """The source tree this code runs from (an editable install or a clone), else None (a wheel)."""
    if (_TREE / "setup.cfg").is_file() and (_TREE / "handler" / "runtime" / "pom.xml").is_file():
        return _TREE
    return None


def cache_dir() -> Path:
    """``$LORASHIP_CACHE``, else ``$XDG_CACHE_HOME/loraship``, else ``~/.cache/loraship``."""
    env = os.environ.get("LORASHIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "loraship"


def runtime_dir() -> Path:
    """The DJL runtime (jars in ``djl/``, the compiled host in ``host/``).

    ``$LORASHIP_RUNTIME``, else a checkout's git-ignored ``lib/`` (``make runtime``), else
    ``<cache>/runtime`` for an installed wheel (``loraship runtime prepare`` fills it).
    """
    env = os.environ.get("LORASHIP_RUNTIME")
    if env:
        return Path(env)
    tree = source_checkout()
    return tree / "lib" if tree else cache_dir() / "runtime"
