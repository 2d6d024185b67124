"""Where loraship keeps things: the repo's git-ignored lib/ and a per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """``$LORASHIP_CACHE``, else ``$XDG_CACHE_HOME/loraship``, else ``~/.cache/loraship``."""
    env = os.environ.get("LORASHIP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "loraship"


def runtime_dir() -> Path:
    """The DJL runtime fetched by ``make runtime``: jars in ``djl/``, the compiled host in ``host/``."""
    return Path(os.environ.get("LORASHIP_RUNTIME", REPO_ROOT / "lib"))


def faq_csv() -> Path:
    return REPO_ROOT / "training" / "data" / "amazon_sagemaker_faqs.csv"
