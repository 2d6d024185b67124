"""``loraship build``: write a DJL Serving model directory for the handler."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import field_validator

from . import handler
from .core.adapters import AdapterArgError, key_values, parse_adapter_pairs
from .core.errors import LorashipError
from .core.hashing import copy_ignore
from .core.models import resolve_model
from .handler.properties import ServingOptions
from .handler.settings import Flag, Settings

HANDLER_SRC = Path(handler.__file__).resolve().parent
#: Admission limits written into every model dir (defaults: ServingOptions; --option KEY=VALUE overrides).
LIMITS = ("max_inputs_per_request", "max_request_tokens", "max_batch_total_tokens")
#: Pinned into requirements.txt. torch is left to the host: the LMI container's build matches its CUDA.
#: ninja: torch's extension builder needs it for the decode step's row kernel (handler/row_kernel.py).
RUNTIME_REQUIREMENTS = ("transformers", "peft", "accelerate", "safetensors", "ninja")


class BuildError(LorashipError):
    pass


class BuildOptions(Settings):
    """A model dir to write: the flags of ``loraship build`` (and ``build_model_dir``'s arguments)."""

    model: str = "default"
    """'default', a local HF folder, or a hub id"""
    out: Path
    """model dir to write"""
    adapters: Annotated[dict[str, Path], Flag(name="--adapter", repeat=True, metavar="NAME=DIR")] = {}
    """a PEFT LoRA adapter folder to serve as NAME (repeatable; the first is also the seed's
    option.adapter_name)"""
    pipeline: str = "instruction"
    """pipeline name or module:Class"""
    batching: Literal["static", "continuous"] = "continuous"
    """continuous: DJL's async mode, requests join and leave the running batch between decode steps (up to
    option.max_rolling_batch_size rows); static: DJL's batch_size requests per generate call. Continuous is
    the default: it won the benchmark (README, Static or continuous batching)"""
    batch_size: int = 1
    """DJL batch_size (requests per generate call; static batching)"""
    max_batch_delay: int = 100
    """DJL max_batch_delay in ms"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """weights' dtype (auto: float32 on CPU, bfloat16 on a GPU that has it)"""
    max_new_tokens: int = 512
    """cap on a request's max_new_tokens"""
    predict_timeout: int = 120
    """seconds before DJL restarts a stuck worker"""
    retry_threshold: int = 10
    """worker crashes DJL Serving recovers from before it marks the model FAILED (DJL's own default, 0,
    fails the model on the first crash)"""
    options: Annotated[dict[str, str], Flag(name="--option", repeat=True, metavar="KEY=VALUE")] = {}
    """extra option.KEY=VALUE line for serving.properties (repeatable)"""
    overwrite: bool = False
    """replace OUT if it exists"""

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value):
        return parse_adapter_pairs(value) if isinstance(value, list) else value

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value):
        return key_values(value) if isinstance(value, list) else value


def parse_adapter_args(values: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` pairs -> {name: folder}, with names and folders checked."""
    try:
        return parse_adapter_pairs(values)
    except AdapterArgError as exc:
        raise BuildError(str(exc)) from None


def serving_properties(
    model_id: str,
    adapters: dict[str, Path],
    *,
    pipeline: str,
    batch_size: int,
    max_batch_delay: int,
    dtype: str,
    max_new_tokens: int,
    predict_timeout: int,
    options: dict[str, str],
    retry_threshold: int = 10,
    batching: str = "static",
) -> str:
    lines = [
        "# Written by `loraship build`. DJL Serving reads it; the handler gets option.* on its first call.",
        "engine=Python",
        "option.entryPoint=model.py",
        f"option.model_id={model_id}",
        f"option.pipeline={pipeline}",
        f"option.dtype={dtype}",
        f"option.max_new_tokens={max_new_tokens}",
        "option.enable_lora=true",
        "option.trust_remote_code=false",
        # LMI would turn on its own rolling batch / async mode for a causal LM: this handler batches itself.
        "option.rolling_batch=disable",
        f"option.predict_timeout={predict_timeout}",
        # continuous batching compiles the decode step before the model reports ready: ~2 min the first time
        # for the default model on 2 cores (DJL's default, 240 s, leaves little room on a busy host)
        "option.model_loading_timeout=600",
        # continuous: DJL's async mode hands every request to the handler at once (batch_size must be 1);
        # the handler's scheduler batches between decode steps, up to option.max_rolling_batch_size rows.
        *(["option.async_mode=true", "batch_size=1"] if batching == "continuous" else [f"batch_size={batch_size}"]),
        f"max_batch_delay={max_batch_delay}",
        "minWorkers=1",
        "maxWorkers=1",
        # Real DJL Serving marks the model FAILED after more worker crashes than this (default 0: the
        # first crash ends the model for the life of the server); below it, it starts a new worker.
        f"retry_threshold={retry_threshold}",
    ]
    if adapters:
        first = next(iter(adapters))
        lines += [f"option.adapter_name={first}", f"option.adapter_checkpoint=adapters/{first}"]
        targets = adapter_targets(adapters.values())
        if targets and "lora_target_modules" not in options:
            # the compiled one-row step gives these adapters' modules its LoRA slot, and no others: each
            # slot costs an adapter step (README, Decode speed at batch 1)
            lines.append(f"option.lora_target_modules={','.join(targets)}")
    defaults = ServingOptions()
    lines += [f"option.{k}={options.get(k, getattr(defaults, k))}" for k in LIMITS]
    lines += [f"option.{k}={v}" for k, v in options.items() if k not in LIMITS]
    return "\n".join(lines) + "\n"


def adapter_targets(folders) -> list[str]:
    """The union of the adapters' ``target_modules`` when each names them as a list; [] when one names them
    otherwise (a regex, ``all-linear``), so that every linear layer keeps its slot."""
    targets: set[str] = set()
    for folder in folders:
        names = json.loads((Path(folder) / "adapter_config.json").read_text()).get("target_modules")
        if not isinstance(names, list):
            return []
        targets.update(names)
    return sorted(targets)


def requirements_txt() -> str:
    pins = []
    for name in RUNTIME_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return "\n".join(pins) + "\n"


def build_model_dir(
    model: str,
    out: str | Path,
    adapters: dict[str, Path] | None = None,
    *,
    pipeline: str = "instruction",
    batch_size: int = 1,
    max_batch_delay: int = 100,
    dtype: str = "auto",
    max_new_tokens: int = 512,
    predict_timeout: int = 120,
    options: dict[str, str] | None = None,
    overwrite: bool = False,
    retry_threshold: int = 10,
    batching: str = "static",
) -> Path:
    """Write the model dir into a temporary folder, then move it into place as a whole."""
    out = Path(out).resolve()
    adapters = adapters or {}
    if batch_size < 1 or max_batch_delay < 0 or max_new_tokens < 1 or predict_timeout < 1 or retry_threshold < 0:
        raise BuildError(
            "batch_size, max_new_tokens and predict_timeout must be >= 1, max_batch_delay and retry_threshold >= 0"
        )
    if batching not in ("static", "continuous"):
        raise BuildError(f"batching must be static or continuous, got {batching!r}")
    if batching == "continuous" and batch_size != 1:
        raise BuildError(
            "--batch-size is static batching's (add --batching static); continuous batching takes "
            "--option max_rolling_batch_size=N"
        )
    if out.exists() and not overwrite:
        raise BuildError(f"{out} already exists; pass --overwrite to replace it")
    model_id = resolve_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "serving.properties").write_text(
            serving_properties(
                model_id,
                adapters,
                pipeline=pipeline,
                batch_size=batch_size,
                max_batch_delay=max_batch_delay,
                dtype=dtype,
                max_new_tokens=max_new_tokens,
                predict_timeout=predict_timeout,
                options=options or {},
                retry_threshold=retry_threshold,
                batching=batching,
            )
        )
        entry = "djl_async_entry.py" if batching == "continuous" else "djl_entry.py"
        shutil.copyfile(HANDLER_SRC / entry, tmp / "model.py")
        shutil.copytree(HANDLER_SRC, tmp / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "runtime"))
        (tmp / "requirements.txt").write_text(requirements_txt())
        for name, src in adapters.items():
            shutil.copytree(src, tmp / "adapters" / name, ignore=copy_ignore)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
