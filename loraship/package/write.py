"""Writing the model artifact: a reproducible ``model.tar.gz`` with a manifest of file hashes.

Sorted entries, fixed mtime/uid/gid/mode and a gzip header without name or time, so the same
inputs give the same sha256. It is written to a temporary file beside ``out`` and renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import __version__
from ..core.hashing import file_digest
from .inspect import adapter_hashes_from_files, check_summary
from .read import MANIFEST, Inspection, PackageError, inside, inspect_model_dir

MANIFEST_FORMAT = "loraship-artifact/1"
#: Fast (weights barely compress); the archive sha256 is stable for a given zlib, the manifest everywhere.
GZIP_LEVEL = 1


@dataclass
class Artifact:
    """A written archive; with ``path=None`` (check only) ``manifest`` holds the ``--check`` report."""

    path: Path | None
    sha256: str
    manifest: dict


def build_manifest(inspection: Inspection, digests: Mapping[str, bytes]) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "created_by": f"loraship {__version__}",
        "model_id": inspection.model_id,
        "model_source": inspection.model_source,
        "adapters": adapter_hashes_from_files(digests),
        "files": {rel: d.hex() for rel, d in sorted(digests.items())},
    }


def _tarinfo(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _directories(paths: Iterable[str]) -> set[str]:
    dirs = set()
    for rel in paths:
        parent = PurePosixPath(rel).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    return dirs


def write_archive(inspection: Inspection, out: Path) -> Artifact:
    """Write the reproducible tar.gz to a temp file beside ``out``, then rename it into place."""
    digests = {rel: file_digest(p) for rel, p in inspection.files.items()}
    props_bytes = inspection.properties.encode("utf-8")
    digests["serving.properties"] = hashlib.sha256(props_bytes).digest()
    manifest = build_manifest(inspection, digests)
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    in_memory = {"serving.properties": props_bytes, MANIFEST: manifest_bytes}
    dirs = _directories([*inspection.files, *in_memory])
    entries = sorted({*inspection.files, *in_memory, *dirs})

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    for rel in entries:
                        if rel in dirs:
                            tar.addfile(_tarinfo(rel, directory=True))
                        elif rel in in_memory:
                            tar.addfile(_tarinfo(rel, len(in_memory[rel])), io.BytesIO(in_memory[rel]))
                        else:
                            src = inspection.files[rel]
                            with open(src, "rb") as f:
                                tar.addfile(_tarinfo(rel, os.fstat(f.fileno()).st_size), f)
            raw.flush()
            os.fsync(raw.fileno())
        sha = file_digest(Path(tmp)).hex()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Artifact(out, sha, manifest)


def package_model_dir(
    model_dir: str | Path,
    out: str | Path | None,
    *,
    include_model: bool = False,
    profile: str | Path | None = None,
    overwrite: bool = False,
) -> Artifact:
    """Check ``model_dir`` and write the SageMaker artifact to ``out`` (``out=None``: check only)."""
    inspection = inspect_model_dir(model_dir, include_model=include_model, profile=profile)
    if out is None:
        return Artifact(None, "", check_summary(inspection))
    out = Path(out).expanduser().resolve()
    if inside(out, inspection.model_dir):
        raise PackageError(f"--out {out} is inside the model dir; write the archive elsewhere")
    if out.exists() and not overwrite:
        raise PackageError(f"{out} already exists; pass --overwrite to replace it")
    return write_archive(inspection, out)
