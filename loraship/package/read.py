"""Reading and checking a model dir the way DJL and the handler will load it.

``serving.properties`` is parsed with the handler's own ``ServingOptions``; the entry point,
``requirements.txt``, the base model and every adapter are checked, and every problem is
reported at once in one :class:`PackageError`.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import LorashipError
from ..core.hashing import adapter_sha256 as _adapter_sha256
from ..core.hashing import shipped_files, skipped

MANIFEST = "manifest.json"
#: Where ``--include-model`` puts the base model inside the archive; ``option.model_id`` becomes this
#: relative path, which the handler resolves against the model dir (``ServingOptions.resolve``).
INCLUDED_MODEL = "model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],]*==[^=\s]+$")


class PackageError(LorashipError):
    pass


def adapter_sha256(folder: str | Path) -> str:
    """``loraship.core.hashing.adapter_sha256``, raising PackageError for a missing folder."""
    try:
        return _adapter_sha256(folder)
    except FileNotFoundError as exc:
        raise PackageError(str(exc)) from None


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


def _check_entry_point(path: Path, problems: list[str], async_mode: bool = False) -> bool:
    """Compile the entry point, check it defines ``handle`` (``async def`` in DJL's async mode, a plain
    ``def`` otherwise: DJL awaits it, or calls it); True when it imports ``handler``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        problems.append(f"entry point {path.name} does not compile: {exc}")
        return False
    kind, wrong = (ast.AsyncFunctionDef, ast.FunctionDef) if async_mode else (ast.FunctionDef, ast.AsyncFunctionDef)
    if not any(isinstance(n, kind) and n.name == "handle" for n in tree.body):
        which = "async def handle(inputs) (option.async_mode=true)" if async_mode else "handle(inputs) function"
        if any(isinstance(n, wrong) and n.name == "handle" for n in tree.body):
            which += ": its handle is " + ("a plain def" if async_mode else "async, but option.async_mode is not true")
        problems.append(f"entry point {path.name} defines no module-level {which}")
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


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves to ``folder`` or somewhere below it."""
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

    from ..handler.adapters import NAME as ADAPTER_NAME

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
    _check_requirements(model_dir / "requirements.txt", problems)
    try:
        opts = handler_options(props, model_dir)
    except HandlerError as exc:
        raise PackageError("; ".join([*problems, exc.message])) from None
    entry = props.get("option.entryPoint", "model.py")
    entry_path = model_dir / entry
    if not entry_path.is_file() or not inside(entry_path, model_dir):
        problems.append(f"option.entryPoint={entry} is not a file in the model dir")
    elif (
        _check_entry_point(entry_path, problems, opts.async_mode)
        and not (model_dir / "handler" / "__init__.py").is_file()
    ):
        problems.append(f"{entry} imports the handler package but the model dir has no handler/ folder")
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
        elif inside(local, model_dir):
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
        if not inside(ckpt, model_dir):
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
