"""GGUF files for llama.cpp made by llama.cpp's own converters, for ``loraship bench peer``.

``convert_model``: an HF model folder -> an F32 GGUF (``convert_hf_to_gguf.py --outtype f32``), so llama.cpp
runs the same weight values as the handler. ``convert_adapter``: a peft LoRA adapter folder -> a LoRA GGUF
(``convert_lora_to_gguf.py --base <model folder> --outtype f32``), which llama.cpp's server loads with
``--lora_path``.

The converters are not in llama-cpp-python's wheel but are in its sdist (``vendor/llama.cpp``). Unless a
llama.cpp source tree is given, the sdist of the installed llama-cpp-python is fetched once with ``pip download``
and only the converters are kept, in ``<cache>/llama.cpp/llama-cpp-python-<version>/`` (the two scripts,
``conversion/``, ``gguf-py/``, LICENSE). They run as subprocesses of this Python with ``PYTHONPATH`` at that
``gguf-py``: each converter needs the gguf-py of its own llama.cpp (PyPI's gguf 0.19.0 lacks
``gguf.LazyChunkedTensor``, which 0.3.36's converter calls).

Converted files are cached by content in ``<cache>/gguf/``: the key hashes the input files, the converter's
source and the arguments, so a run reuses them and a changed model, adapter or converter converts anew. Each is
written to a temporary file beside its target and renamed, so an interrupted conversion leaves no half file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .core.errors import Failed, LorashipError
from .core.hashing import combine_file_hashes, file_digest
from .core.paths import cache_dir

DIST = "llama-cpp-python"
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
#: What is kept of the sdist's vendor/llama.cpp (conversion/ exists since the converters were split up).
KEEP = (*SCRIPTS, "LICENSE", "conversion/", "gguf-py/")
#: Modules the converters import on the way to a Llama model or adapter -> the pip package that has each.
REQUIRED = {
    "numpy": "numpy",
    "torch": "torch",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece",  # imported for every Llama vocabulary, even one without tokenizer.model
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "requests": "requests",
}


class ConvertError(LorashipError):
    """A converter cannot run here (no source tree, a missing package): nothing was converted."""


class ConvertFailed(Failed):
    """A converter ran and failed."""


def converters(src: Path | None = None, log=print) -> Path:
    """The llama.cpp tree whose converters to run: ``src`` checked, else the installed version's, fetched once."""
    if src is not None:
        src = Path(src).expanduser().resolve()
        missing = [p for p in (*SCRIPTS, "gguf-py/gguf/__init__.py") if not (src / p).is_file()]
        if missing:
            raise ConvertError(f"--llama-cpp-src {src}: not a llama.cpp source tree (no {', '.join(missing)})")
        return src
    try:
        version = importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ConvertError(f"{DIST} is not installed: pip install 'loraship[peers]'") from None
    target = cache_dir() / "llama.cpp" / f"{DIST}-{version}"
    if all((target / p).is_file() for p in SCRIPTS):
        return target
    log(f"fetching llama.cpp's converters: the sdist of {DIST}=={version} (pip download) into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"{DIST}=={version}", "--no-binary", ":all:", "--no-deps"]
        done = subprocess.run([*cmd, "--dest", tmp], capture_output=True, text=True)
        sdists = sorted(Path(tmp).glob("*.tar.gz"))
        if done.returncode or not sdists:
            raise ConvertError(
                f"could not fetch {DIST}=={version}'s sdist for llama.cpp's converters ({' '.join(cmd)}); "
                f"pass --llama-cpp-src DIR (a llama.cpp source tree of the same version). pip said:\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
        tree = Path(tmp) / "llama.cpp"
        extract_converters(sdists[0], tree)
        os.replace(tree, target)
    return target


def extract_converters(sdist: Path, dest: Path) -> None:
    """Only ``KEEP`` of the sdist's ``vendor/llama.cpp`` into ``dest``."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            top, _, rest = m.name.partition("/")
            rel = rest.removeprefix("vendor/llama.cpp/")
            if rel != rest and (m.isfile() or m.isdir()) and any(rel == k or rel.startswith(k) for k in KEEP):
                m.name = rel
                members.append(m)
        if not any(m.name == SCRIPTS[0] for m in members):
            raise ConvertError(f"{sdist.name} has no vendor/llama.cpp/{SCRIPTS[0]}")
        tar.extractall(dest, members=members, filter="data")


def check_requirements() -> None:
    """Every package the converters import, or one error that names all that are missing."""
    missing = sorted({pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None})
    if missing:
        raise ConvertError(
            f"llama.cpp's converters need Python packages missing here: {', '.join(missing)} "
            f"(pip install {' '.join(missing)}, or pip install 'loraship[peers]')"
        )


def _content_key(folder: Path, names: list[str]) -> str:
    """The named files of ``folder``, by relative name and content (the project's rule: core.hashing)."""
    return combine_file_hashes({name: file_digest(folder / name) for name in names})


def _tree_key(src: Path) -> str:
    """The converters' own source: their scripts, conversion/ and gguf-py/gguf/."""
    modules = [str(p.relative_to(src)) for d in ("conversion", "gguf-py/gguf") for p in src.glob(f"{d}/**/*.py")]
    return _content_key(src, [*SCRIPTS, *modules])


def _files_key(folder: Path, select=lambda name: True) -> str:
    """A folder's top-level files (those ``select`` keeps), by name and content."""
    return _content_key(folder, [p.name for p in folder.iterdir() if p.is_file() and select(p.name)])


def _convert(script: str, args: list[str], key_parts: list[str], stem: str, src: Path, log) -> Path:
    """Run ``script`` into ``<cache>/gguf/<stem>-<key>.gguf`` unless that file is there already."""
    key = hashlib.sha256("\0".join([script, *key_parts, _tree_key(src)]).encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{stem}-{key}.gguf"
    if target.is_file():
        return target
    check_requirements()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".tmp.gguf", dir=target.parent)
    os.close(fd)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src / "gguf-py"), env.get("PYTHONPATH")) if p)
    env.pop("NO_LOCAL_GGUF", None)  # else the script puts the installed gguf first
    cmd = [sys.executable, str(src / script), *args, "--outfile", tmp]
    log(f"converting with llama.cpp's {script}: {' '.join(args)}")
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            out = (done.stdout + done.stderr)[-3000:]
            raise ConvertFailed(f"{script} failed (exit {done.returncode}): {' '.join(cmd)}\n{out}")
        os.chmod(tmp, 0o644)  # mkstemp's file is private; the cache's files are not
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def convert_model(model: str | Path, src: Path, log=print) -> Path:
    """An F32 GGUF of the HF model folder ``model`` (cached by content)."""
    model = Path(model).resolve()
    args = [str(model), "--outtype", "f32"]
    return _convert(SCRIPTS[0], args, ["f32", _files_key(model)], "model-f32", src, log)


def convert_adapter(adapter: Path, base: str | Path, src: Path, log=print) -> Path:
    """A LoRA GGUF (F32) of the peft adapter folder ``adapter`` trained on the HF model folder ``base``."""
    adapter, base = Path(adapter).resolve(), Path(base).resolve()
    # The LoRA file takes the base's config (shapes, head counts), never its weights.
    base_key = _files_key(base, lambda n: not n.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")))
    keys = ["f32", _files_key(adapter, lambda n: n.startswith("adapter_")), base_key]
    args = [str(adapter), "--base", str(base), "--outtype", "f32"]
    return _convert(SCRIPTS[1], args, keys, "lora-f32", src, log)
