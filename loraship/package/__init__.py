"""``loraship package``: a model dir -> the SageMaker model artifact (``model.tar.gz``).

The archive holds the model dir's files at its root (``serving.properties``, ``model.py``, the
``handler`` package, ``requirements.txt``, ``adapters/``), a ``manifest.json`` of file hashes and,
with ``include_model``, the base model as ``model/``. SageMaker extracts it into ``/opt/ml/model``,
which is DJL's model dir in the LMI container.

Before anything is written the model dir is checked the way DJL and the handler will load it
(``serving.properties`` parsed with the handler's own ``ServingOptions``, the entry point, every
adapter), and every problem is reported at once. The archive is reproducible: sorted entries,
fixed mtime/uid/gid/mode, gzip header without name or time, so the same inputs give the same
sha256. It is written to a temporary file beside ``out`` and renamed into place.

Adapter identity: :func:`adapter_sha256` hashes the files of an adapter folder (sorted relative
paths and contents, skipping what packaging skips). ``loraship gate`` records it per adapter in
``gate.json``; ``loraship rollout`` recomputes it from the bytes inside the archive and refuses a
mismatch.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.hashing import adapter_sha256 as _adapter_sha256
from ..core.hashing import combine_file_hashes, file_digest, shipped_files, skipped

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "loraship-artifact/1"
#: Where ``--include-model`` puts the base model inside the archive; ``option.model_id`` becomes this
#: relative path, which the handler resolves against the model dir (``ServingOptions.resolve``).
INCLUDED_MODEL = "model"
#: Fast (weights barely compress); the archive sha256 is stable for a given zlib, the manifest everywhere.
GZIP_LEVEL = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*==[^=\s]+$")


class PackageError(Exception):
    pass


# -- hashing (one rule, in loraship.core.hashing) ------------------------------------------------------


def adapter_sha256(folder: str | Path) -> str:
    """``loraship.core.hashing.adapter_sha256``, raising PackageError for a missing folder."""
    try:
        return _adapter_sha256(folder)
    except FileNotFoundError as exc:
        raise PackageError(str(exc)) from None


def adapter_hashes_from_files(digests: Mapping[str, bytes]) -> dict[str, str]:
    """``adapters/<name>/...`` entries of an archive's ``{path: digest}`` -> {name: adapter_sha256}."""
    per: dict[str, dict[str, bytes]] = {}
    for rel, digest in digests.items():
        parts = PurePosixPath(rel).parts
        if len(parts) >= 3 and parts[0] == "adapters":
            per.setdefault(parts[1], {})[PurePosixPath(*parts[2:]).as_posix()] = digest
    return {name: combine_file_hashes(files) for name, files in sorted(per.items())}


# -- serving.properties --------------------------------------------------------------------------


def read_properties(text: str) -> dict[str, str]:
    """Java-properties lines as DJL reads them: ``key=value`` / ``key: value``, ``#``/``!`` comments."""
    props: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        key, value = (line[:cut], line[cut + 1 :]) if cut >= 0 else (line, "")
        props[key.strip()] = value.strip()
    return props


def merge_properties(text: str, updates: Mapping[str, str]) -> str:
    """``text`` with each key of ``updates`` set: replaced where it is, appended where it is not."""
    left = dict(updates)
    lines = []
    for raw in text.splitlines():
        stripped = raw.strip()
        key = re.split(r"[=:]", stripped, maxsplit=1)[0].strip() if stripped and stripped[0] not in "#!" else None
        if key in left:
            lines.append(f"{key}={left.pop(key)}")
        else:
            lines.append(raw)
    if left:
        lines.append("# set by `loraship package`")
        lines += [f"{k}={v}" for k, v in left.items()]
    return "\n".join(lines) + "\n"


def handler_options(props: Mapping[str, str], model_dir: str | Path):
    """The handler's typed options from ``serving.properties`` (``option.*`` keys, prefix stripped)."""
    from loraship.handler.properties import ServingOptions

    opts = {k[len("option.") :]: v for k, v in props.items() if k.startswith("option.")}
    opts["model_dir"] = str(model_dir)
    return ServingOptions.from_properties(opts)


# -- checking a model dir ------------------------------------------------------------------------


@dataclass
class Inspection:
    """What packaging found in a model dir: the files to ship and the properties to write."""

    model_dir: Path
    properties: str
    """serving.properties as it goes into the archive (profile merged, model_id rewritten)."""
    files: dict[str, Path]
    """{archive path: source file} for everything but serving.properties and the manifest."""
    model_id: str
    model_source: str
    """'hub' | 'local' (inside the model dir) | 'included' (copied in as ``model/``) | 's3'."""
    adapters: dict[str, Path] = field(default_factory=dict)


def _check_entry_point(path: Path, problems: list[str]) -> bool:
    """Compile the entry point, check it defines ``handle``; True when it imports ``handler``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        problems.append(f"entry point {path.name} does not compile: {exc}")
        return False
    if not any(isinstance(n, ast.FunctionDef) and n.name == "handle" for n in tree.body):
        problems.append(f"entry point {path.name} defines no module-level handle(inputs) function")
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    return "handler" in imported


def _check_requirements(path: Path, problems: list[str]) -> None:
    if not path.is_file():
        problems.append(
            "requirements.txt is missing (the container pip-installs the handler's pinned dependencies from it)"
        )
        return
    loose = [
        ln
        for ln in (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
        if ln and not ln.startswith("-") and not _PIN.match(ln)
    ]
    if loose:
        problems.append(f"requirements.txt must pin exact versions (name==version): {', '.join(loose)}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def inspect_model_dir(
    model_dir: str | Path, *, include_model: bool = False, profile: str | Path | None = None
) -> Inspection:
    """Check a model dir as DJL and the handler would load it; raise one PackageError listing every problem."""
    from loraship.handler.adapters import validate_adapter_dir
    from loraship.handler.errors import HandlerError
    from loraship.handler.pipelines import known_pipelines

    from ..build import ADAPTER_NAME

    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise PackageError(f"model dir {model_dir} does not exist")
    sp = model_dir / "serving.properties"
    if not sp.is_file():
        raise PackageError(f"{model_dir} has no serving.properties: is it a model dir written by `loraship build`?")
    text = sp.read_text(encoding="utf-8")
    if profile is not None:
        profile_path = Path(profile)
        if not profile_path.is_file():
            raise PackageError(f"profile {profile} does not exist")
        text = merge_properties(text, read_properties(profile_path.read_text(encoding="utf-8")))
    props = read_properties(text)
    problems: list[str] = []
    files = {rel: p for rel, p in shipped_files(model_dir).items() if rel not in ("serving.properties", MANIFEST)}

    engine = props.get("engine", "Python")
    if engine != "Python":
        problems.append(f"engine={engine}: loraship's handler runs on DJL's Python engine (engine=Python)")
    entry = props.get("option.entryPoint", "model.py")
    entry_path = model_dir / entry
    if not entry_path.is_file() or not _inside(entry_path, model_dir):
        problems.append(f"option.entryPoint={entry} is not a file in the model dir")
    elif _check_entry_point(entry_path, problems) and not (model_dir / "handler" / "__init__.py").is_file():
        problems.append(f"{entry} imports the handler package but the model dir has no handler/ folder")
    _check_requirements(model_dir / "requirements.txt", problems)

    try:
        opts = handler_options(props, model_dir)
    except HandlerError as exc:
        raise PackageError("; ".join([*problems, exc.message])) from None
    if opts.pipeline not in known_pipelines() and ":" not in opts.pipeline:
        problems.append(f"option.pipeline={opts.pipeline} is unknown; known pipelines: {', '.join(known_pipelines())}")

    # The base model: SageMaker sees only what is in the archive, or a hub/S3 id it can download.
    model_id, source = opts.model_id, "hub"
    local = None
    if os.path.isabs(model_id):
        local = Path(model_id)
    elif not model_id.startswith("s3://") and (model_dir / model_id).exists():
        local = model_dir / model_id  # what ServingOptions.resolve does
    if model_id.startswith("s3://"):
        source = "s3"
    elif local is not None:
        if not local.is_dir() or not (local / "config.json").is_file():
            problems.append(f"option.model_id={model_id} is not a model folder with config.json")
        elif _inside(local, model_dir):
            source = "local"
            model_id = local.resolve().relative_to(model_dir).as_posix()
        elif include_model:
            source = "included"
            model_id = INCLUDED_MODEL
            if any(rel.split("/")[0] == INCLUDED_MODEL for rel in files):
                problems.append(f"--include-model needs the name {INCLUDED_MODEL}/ but the model dir already has it")
            files.update({f"{INCLUDED_MODEL}/{rel}": p for rel, p in shipped_files(local).items()})
        else:
            problems.append(
                f"option.model_id={model_id} is a local folder outside the model dir: SageMaker (and the LMI "
                "container) cannot see it. "
                f"Pass --include-model to copy it into the archive as {INCLUDED_MODEL}/ (option.model_id "
                f"becomes {INCLUDED_MODEL}, resolved against the model dir), or build the model dir with a "
                "hub id (loraship build --model org/name)"
            )
    elif not _HUB_ID.match(model_id):
        problems.append(f"option.model_id={model_id} is neither a folder nor a hub id (org/name)")
    if model_id != opts.model_id:
        text = merge_properties(text, {"option.model_id": model_id})

    # Adapters: every folder under adapters/ is registered by the handler at load time.
    allow_pickle = opts.allow_pickle_adapters
    adapters: dict[str, Path] = {}
    adapters_dir = model_dir / "adapters"
    if adapters_dir.is_dir():
        for sub in sorted(adapters_dir.iterdir()):
            if not sub.is_dir() or skipped(f"adapters/{sub.name}/x"):
                continue
            if not ADAPTER_NAME.match(sub.name) or sub.name == "__base__":
                problems.append(f"adapters/{sub.name}: not a valid adapter name")
                continue
            try:
                validate_adapter_dir(str(sub), allow_pickle=allow_pickle)
                adapters[sub.name] = sub
            except HandlerError as exc:
                problems.append(f"adapters/{sub.name}: {exc.message}")
    if opts.adapter_checkpoint:
        ckpt = Path(opts.resolve(opts.adapter_checkpoint))
        if not _inside(ckpt, model_dir):
            problems.append(
                f"option.adapter_checkpoint={opts.adapter_checkpoint} is outside the model dir: "
                "SageMaker cannot see it (build with --adapter NAME=DIR to copy it in)"
            )
        elif not any(ckpt.resolve() == a.resolve() for a in adapters.values()):
            try:
                validate_adapter_dir(str(ckpt), allow_pickle=allow_pickle)
            except HandlerError as exc:
                problems.append(f"option.adapter_checkpoint: {exc.message}")
    if problems:
        raise PackageError(f"{model_dir} would not load:\n  - " + "\n  - ".join(problems))
    return Inspection(model_dir, text, files, model_id, source, adapters)


# -- writing the archive -------------------------------------------------------------------------


@dataclass
class Artifact:
    path: Path | None
    sha256: str
    manifest: dict


def build_manifest(inspection: Inspection, digests: Mapping[str, bytes]) -> dict:
    from .. import __version__

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
        summary = {
            "model_id": inspection.model_id,
            "model_source": inspection.model_source,
            "adapters": {name: adapter_sha256(p) for name, p in inspection.adapters.items()},
            "files": sorted([*inspection.files, "serving.properties"]),
        }
        return Artifact(None, "", summary)
    out = Path(out).expanduser().resolve()
    if _inside(out, inspection.model_dir):
        raise PackageError(f"--out {out} is inside the model dir; write the archive elsewhere")
    if out.exists() and not overwrite:
        raise PackageError(f"{out} already exists; pass --overwrite to replace it")
    return write_archive(inspection, out)


# -- reading an archive back ---------------------------------------------------------------------


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
