"""The training config: typed sections with a docstring per field, loaded from YAML.

``load_config`` applies ``--set key=value`` overrides, checks every key and type against the
dataclasses below and every value against its section's rules, and raises one ``ConfigError``
listing all the problems it found, each with its dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from .data import FIELDS


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(Exception):
    """A config file or override that cannot be trained from; the message lists every problem."""


@dataclass
class ModelArgs:
    path: str = "default"
    """'default' (the embedded SmolLM2-135M-Instruct), a local HF folder, or a hub id (org/name)."""
    quantize: Literal["none", "8bit", "4bit"] = "none"
    """Load the frozen base with bitsandbytes (CUDA only) and prepare it with peft's
    ``prepare_model_for_kbit_training``; 4bit is NF4 with bf16 compute (QLoRA)."""
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    """Autocast precision of the forward pass; weights and LoRA updates stay fp32. fp16 needs CUDA."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about 30% slower, much less activation memory."""

    def problems(self) -> list[str]:
        return []


@dataclass
class DataArgs:
    path: str = "../data/amazon_sagemaker_faqs.csv"
    """The data file; a relative path in a config file is relative to that file's folder."""
    format: Literal["auto", "csv", "jsonl"] = "auto"
    """File format; 'auto' picks by suffix (.csv, .jsonl / .json)."""
    header: bool | Literal["auto"] = "auto"
    """CSV only: whether the first row names the columns; 'auto' says yes when it holds the
    instruction and response columns that ``columns`` names."""
    columns: dict[str, str | int] = field(
        default_factory=lambda: {"instruction": "instruction", "context": "context", "response": "response"}
    )
    """Which column holds each field (instruction, response, optional context): a name (CSV header
    or JSON key) or a 0-based CSV position. Dolly-15k rows need no mapping."""
    test_size: int | float = 14
    """Held-out rows: a count, or a fraction in (0, 1). They are never trained on."""
    seed: int = 0
    """Seed of the train/test split (the same permutation as ``datasets.Dataset.train_test_split``)."""
    max_length: int = 256
    """Training examples longer than this many tokens (prompt + response) are dropped and counted."""
    drop_empty: bool = False
    """Drop rows with an empty instruction or response (and count them) instead of failing."""

    def problems(self) -> list[str]:
        out = []
        unknown = sorted(set(self.columns) - set(FIELDS))
        if unknown:
            out.append(f"data.columns: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        for name in ("instruction", "response"):
            if name not in self.columns:
                out.append(f"data.columns: needs a column for {name!r}")
        for name, col in self.columns.items():
            if isinstance(col, int) and col < 0:
                out.append(f"data.columns.{name}: a position must be >= 0, got {col}")
        if isinstance(self.test_size, float) and not 0 < self.test_size < 1:
            out.append(f"data.test_size: a fraction must be in (0, 1), got {self.test_size}")
        if isinstance(self.test_size, int) and self.test_size < 1:
            out.append(f"data.test_size: a row count must be >= 1, got {self.test_size}")
        if self.max_length < 8:
            out.append(f"data.max_length: must be >= 8, got {self.max_length}")
        return out


@dataclass
class TemplateArgs:
    special_tokens: bool = False
    """Add the template markers (### Instruction:, ### Response:, ### End) as special tokens, as
    Dolly did. The adapter then carries the resized embeddings and its own tokenizer."""

    def problems(self) -> list[str]:
        return []


@dataclass
class LoraArgs:
    r: int = 8
    """Rank of the update matrices: adapter size and memory grow linearly with it."""
    alpha: float = 16.0
    """Scale of the update (alpha / r multiplies it)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input."""
    target_modules: list[str] | None = None
    """Module names to adapt; null picks per architecture (GPT-NeoX: query_key_value, Llama and
    kin: q_proj, k_proj, v_proj, o_proj)."""

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"lora.r: must be >= 1, got {self.r}")
        if self.alpha <= 0:
            out.append(f"lora.alpha: must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            out.append(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            out.append("lora.target_modules: an empty list adapts nothing; use null for the default")
        return out


@dataclass
class OptimArgs:
    name: Literal["adamw", "sgd"] = "adamw"
    """torch.optim.AdamW or SGD (with momentum 0.9) over the trainable parameters."""
    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay on the LoRA matrices."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's betas."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; null does not clip."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule over the run (transformers.get_scheduler)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""

    def problems(self) -> list[str]:
        out = []
        if self.lr <= 0:
            out.append(f"optim.lr: must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            out.append(f"optim.weight_decay: must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"optim.betas: needs two values in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            out.append(f"optim.max_grad_norm: must be > 0 or null, got {self.max_grad_norm}")
        if self.warmup_steps < 0:
            out.append(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        return out


@dataclass
class TrainArgs:
    epochs: int = 1
    """Passes over the training rows (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; null runs ``epochs`` full passes."""
    batch_size: int = 4
    """Examples per forward pass (per process): activation memory grows linearly with it."""
    grad_accum: int = 1
    """Forward passes per optimizer step: the effective batch is batch_size x grad_accum x processes."""
    eval_every: int = 0
    """Score the held-out rows every N optimizer steps (and always before the first and after the
    last step); 0 only does the two."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N optimizer steps; 0 writes none."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""

    def problems(self) -> list[str]:
        out = []
        for name in ("epochs", "batch_size", "grad_accum", "keep_checkpoints"):
            if getattr(self, name) < 1:
                out.append(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                out.append(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            out.append(f"train.max_steps: must be >= 1 or null, got {self.max_steps}")
        return out


@dataclass
class TrainConfig:
    seed: int = 0
    """Seed of model initialisation (LoRA matrices, new token rows), dropout and data order."""
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    template: TemplateArgs = field(default_factory=TemplateArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    train: TrainArgs = field(default_factory=TrainArgs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, and validate everything at once."""
    path = Path(path)
    try:
        raw = _yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / Path(data["path"]).expanduser()).resolve())
    problems = []
    for item in overrides:
        problems += _apply_override(raw, item)
    cfg = config_from_dict(raw, problems, source=str(path))
    return cfg


def config_from_dict(raw: dict, problems: list[str] | None = None, source: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain data; raise one ConfigError with every problem found."""
    problems = list(problems or [])
    # A value of the wrong type is left at its default, so the value rules can still run on the rest.
    cfg = _build(TrainConfig, raw, "", problems)
    for section in dataclasses.fields(TrainConfig):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            problems += value.problems()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n{lines}")
    return cfg


def _apply_override(raw: dict, item: str) -> list[str]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        return [f"--set takes KEY=VALUE (e.g. train.max_steps=10), got {item!r}"]
    try:
        value = _yaml(text) if text else ""
    except yaml.YAMLError:
        value = text
    if key == "data.path" and isinstance(value, str):
        # An override is typed at a shell, so its relative path means the working directory.
        value = str(Path(value).expanduser().resolve())
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return [f"--set {key}: {part!r} is not a section"]
        node = child
    node[parts[-1]] = value
    return []


def _build(cls, raw, prefix: str, problems: list[str]):
    """Instantiate dataclass ``cls`` from ``raw``, recording unknown keys and wrong types."""
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_type_name(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value, hint = raw[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, value, f"{prefix}{f.name}.", problems)
        elif _matches(value, hint):
            kwargs[f.name] = float(value) if hint is float and isinstance(value, int) else value
        else:
            problems.append(f"{prefix}{f.name}: expected {_hint_name(hint)}, got {value!r} ({_type_name(value)})")
    return cls(**kwargs)


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _hint_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in args)
    if origin is list:
        return f"a list of {_hint_name(args[0])}"
    if origin is dict:
        return f"a mapping of {_hint_name(args[0])} to {_hint_name(args[1])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _type_name(value) -> str:
    return {
        type(None): "null",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
    }.get(type(value), type(value).__name__)
