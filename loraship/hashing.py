"""Content hashes that tie eval results, gate reports and artifacts to the exact adapter files."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(folder: str | Path, exclude: tuple[str, ...] = ("__pycache__",)) -> str:
    """sha256 over the sorted relative paths and contents of every file under ``folder``.

    Renaming, adding, removing or editing any file changes it; file times and the folder's own
    location do not.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part in exclude for part in rel.split("/")):
            continue
        h.update(rel.encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    return h.hexdigest()


def adapter_sha256(folder: str | Path) -> str:
    """The identity of an adapter folder (weights, config and tokenizer files alike)."""
    return tree_sha256(folder)
