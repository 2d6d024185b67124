"""Content hashes that tie eval results, gate reports and artifacts to the exact adapter files.

One rule decides which files count, and ``build`` / ``package`` copy exactly those: so a training
output folder, its copy in a model dir and its copy in an archive all hash the same.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20
SKIP_DIRS = {"__pycache__", ".cache", ".git", ".ipynb_checkpoints", ".pytest_cache", ".loraship"}
SKIP_FILES = {"optimizer.pt", ".DS_Store"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def skipped(rel: str) -> bool:
    """Caches, byte code and training leftovers (``checkpoint-*/``, ``optimizer.pt``)."""
    parts = PurePosixPath(rel).parts
    return (
        any(p in SKIP_DIRS or p.startswith("checkpoint-") for p in parts[:-1])
        or parts[-1] in SKIP_FILES
        or parts[-1].endswith(SKIP_SUFFIXES)
    )


def file_digest(path: str | Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.digest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path).hex()


def shipped_files(folder: str | Path) -> dict[str, Path]:
    """{relative posix path: file} for the files of ``folder`` that count (symlinks followed)."""
    folder = Path(folder)
    files: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in names:
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not skipped(rel):
                files[rel] = path
    return files


def combine_file_hashes(digests: Mapping[str, bytes]) -> str:
    """One hash over ``{relative posix path: sha256 digest}``: ``rel + b"\\0" + digest`` in sorted order."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(rel.encode() + b"\0" + digests[rel])
    return h.hexdigest()


def tree_sha256(folder: str | Path) -> str:
    """sha256 over the sorted relative paths and contents of the files that count under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    return combine_file_hashes({rel: file_digest(p) for rel, p in shipped_files(folder).items()})


def adapter_sha256(folder: str | Path) -> str:
    """The identity of an adapter folder, as ``eval.json`` / ``gate.json`` record it and rollout checks it."""
    return tree_sha256(folder)


def copy_ignore(src: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` ignore function applying :func:`skipped` (for ``build``)."""
    return {
        n
        for n in names
        if n in SKIP_DIRS or n.startswith("checkpoint-") or n in SKIP_FILES or n.endswith(SKIP_SUFFIXES)
    }
