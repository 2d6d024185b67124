"""What an artifact or a checked model dir holds: the ``--check`` report and reading an archive back."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..core.hashing import combine_file_hashes, file_digest
from .read import MANIFEST, Inspection, PackageError, adapter_sha256, read_properties


def adapter_hashes_from_files(digests: Mapping[str, bytes]) -> dict[str, str]:
    """``adapters/<name>/...`` entries of an archive's ``{path: digest}`` -> {name: adapter_sha256}."""
    per: dict[str, dict[str, bytes]] = {}
    for rel, digest in digests.items():
        parts = PurePosixPath(rel).parts
        if len(parts) >= 3 and parts[0] == "adapters":
            per.setdefault(parts[1], {})[PurePosixPath(*parts[2:]).as_posix()] = digest
    return {name: combine_file_hashes(files) for name, files in sorted(per.items())}


def check_summary(inspection: Inspection) -> dict:
    """What ``loraship package --check`` reports for a model dir that would load."""
    return {
        "model_id": inspection.model_id,
        "model_source": inspection.model_source,
        "adapters": {name: adapter_sha256(p) for name, p in inspection.adapters.items()},
        "files": sorted([*inspection.files, "serving.properties"]),
    }


@dataclass
class ArchiveContents:
    sha256: str
    size: int
    digests: dict[str, bytes]
    manifest: dict
    properties: dict[str, str]

    @property
    def adapters(self) -> dict[str, str]:
        return adapter_hashes_from_files(self.digests)


def read_archive(path: str | Path) -> ArchiveContents:
    """Hash every file inside an artifact and check it against its manifest; raise PackageError if it does not match."""
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"artifact {path} does not exist")
    digests: dict[str, bytes] = {}
    blobs: dict[str, bytes] = {}
    problems = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    problems.append(f"unsafe path {name!r}")
                    continue
                if member.isdir():
                    continue
                if not member.isfile():
                    problems.append(f"{name}: links and special files are not allowed")
                    continue
                f = tar.extractfile(member)
                h = hashlib.sha256()
                keep = name in (MANIFEST, "serving.properties")
                chunks = []
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
                    if keep:
                        chunks.append(block)
                digests[name] = h.digest()
                if keep:
                    blobs[name] = b"".join(chunks)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{path} is not a readable tar.gz: {exc}") from None
    if MANIFEST not in blobs or "serving.properties" not in blobs:
        raise PackageError(
            f"{path} has no manifest.json or serving.properties at its root: "
            "is it an archive written by `loraship package`?"
        )
    manifest = json.loads(blobs[MANIFEST])
    files = {k: v for k, v in digests.items() if k != MANIFEST}
    listed = manifest.get("files", {})
    for rel in sorted(set(files) | set(listed)):
        if rel not in listed:
            problems.append(f"{rel} is in the archive but not in its manifest")
        elif rel not in files:
            problems.append(f"{rel} is in the manifest but not in the archive")
        elif files[rel].hex() != listed[rel]:
            problems.append(f"{rel} does not match its manifest hash")
    if problems:
        raise PackageError(f"artifact {path} is inconsistent: " + "; ".join(problems))
    return ArchiveContents(
        file_digest(path).hex(),
        path.stat().st_size,
        files,
        manifest,
        read_properties(blobs["serving.properties"].decode("utf-8")),
    )
