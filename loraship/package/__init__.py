"""``loraship package``: a model dir -> the SageMaker model artifact (``model.tar.gz``).

The archive holds the model dir's files at its root (``serving.properties``, ``model.py``, the
``handler`` package, ``requirements.txt``, ``adapters/``), a ``manifest.json`` of file hashes and,
with ``include_model``, the base model as ``model/``. SageMaker extracts it into ``/opt/ml/model``,
which is DJL's model dir in the LMI container.

:mod:`.read` checks the model dir the way DJL and the handler will load it and reports every
problem at once; :mod:`.write` writes the archive reproducibly (the same inputs give the same
sha256); :mod:`.inspect` reads an archive back against its manifest and builds the ``--check`` report.

Adapter identity: :func:`adapter_sha256` hashes the files of an adapter folder (sorted relative
paths and contents, skipping what packaging skips). ``loraship gate`` records it per adapter in
``gate.json``; ``loraship rollout`` recomputes it from the bytes inside the archive and refuses a
mismatch.
"""

from .inspect import ArchiveContents, adapter_hashes_from_files, check_summary, read_archive
from .read import (
    INCLUDED_MODEL,
    MANIFEST,
    Inspection,
    PackageError,
    adapter_sha256,
    handler_options,
    inspect_model_dir,
    merge_properties,
    read_properties,
)
from .write import GZIP_LEVEL, MANIFEST_FORMAT, Artifact, build_manifest, package_model_dir, write_archive

__all__ = [
    "GZIP_LEVEL",
    "INCLUDED_MODEL",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "ArchiveContents",
    "Artifact",
    "Inspection",
    "PackageError",
    "adapter_hashes_from_files",
    "adapter_sha256",
    "build_manifest",
    "check_summary",
    "handler_options",
    "inspect_model_dir",
    "merge_properties",
    "package_model_dir",
    "read_archive",
    "read_properties",
    "write_archive",
]
