"""The training config: typed sections with a docstring per field, loaded from YAML.

``load_config`` applies ``--set key=value`` overrides and validates the result against the
:class:`~loraship.handler.settings.Settings` models below; it raises one ``TrainConfigError`` listing
every problem found, each with its dotted key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, PlainValidator, ValidationError

from loraship.core.errors import LorashipError
from loraship.handler.settings import Settings, problems

from .data import FIELDS, REQUIRED

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "sagemaker_faqs.yaml"


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


class TrainConfigError(LorashipError):
    """A config file or override that cannot be trained from; the message lists every problem."""


def _rule(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    """A value rule beyond a bound: ``message`` (``{}`` is the value) when ``ok(value)`` is false."""

    def check(value):
        if not ok(value):
            raise ValueError(message.format(value))
        return value

    return AfterValidator(check)


def _header(value):
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"must be true, false or auto, got {value!r}")


def _columns(value):
    """Every problem of the mapping in one message (pydantic would stop at a bad value)."""
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping, got {type(value).__name__}")
    out = []
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        out.append(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    out += [f"needs a column for {name!r}" for name in REQUIRED if name not in value]
    for name, col in value.items():
        if isinstance(col, bool) or not isinstance(col, (str, int)):
            out.append(f"{name}: a column is a name or a 0-based position, got {col!r}")
        elif isinstance(col, int) and col < 0:
            out.append(f"{name}: a position must be >= 0, got {col}")
    if out:
        raise ValueError("; ".join(out))
    return value


def _test_size(value):
    # int and float mean different things here (a count, a fraction): no coercion either way.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a row count or a fraction, got {value!r}")
    if isinstance(value, float) and not 0 < value < 1:
        raise ValueError(f"a fraction must be in (0, 1), got {value}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"a row count must be >= 1, got {value}")
    return value


class _Section(Settings):
    """Strict: YAML already types each value, so a quoted number or a ``true`` count is a mistake."""

    model_config = ConfigDict(strict=True)


class ModelArgs(_Section):
    path: str = "default"
    """'default' (the embedded SmolLM2-135M-Instruct), a local HF folder, or a hub id (org/name)."""
    quantize: Literal["none", "8bit", "4bit"] = "none"
    """Load the frozen base with bitsandbytes (CUDA only) and prepare it with peft's
    ``prepare_model_for_kbit_training``; 4bit is NF4 with bf16 compute (QLoRA)."""
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    """Autocast precision of the forward pass; weights and LoRA updates stay fp32. fp16 needs CUDA."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about 30% slower, much less activation memory."""


class DataArgs(_Section):
    path: str = "../data/amazon_sagemaker_faqs.csv"
    """The data file; a relative path in a config file is relative to that file's folder."""
    format: Literal["auto", "csv", "jsonl"] = "auto"
    """File format; 'auto' picks by suffix (.csv, .jsonl / .json)."""
    header: Annotated[bool | Literal["auto"], PlainValidator(_header)] = "auto"
    """CSV only: whether the first row names the columns; 'auto' says yes when it holds the
    instruction and response columns that ``columns`` names."""
    columns: Annotated[dict[str, str | int], PlainValidator(_columns)] = Field(
        default_factory=lambda: {"instruction": "instruction", "context": "context", "response": "response"}
    )
    """Which column holds each field (instruction, response, optional context): a name (CSV header
    or JSON key) or a 0-based CSV position. Dolly-15k rows need no mapping."""
    test_size: Annotated[int | float, PlainValidator(_test_size)] = 14
    """Held-out rows: a count, or a fraction in (0, 1). They are never trained on."""
    seed: int = 0
    """Seed of the train/test split (the same permutation as ``datasets.Dataset.train_test_split``)."""
    max_length: int = Field(256, ge=8)
    """Training examples longer than this many tokens (prompt + response) are dropped and counted."""
    drop_empty: bool = False
    """Drop rows with an empty instruction or response (and count them) instead of failing."""


class TemplateArgs(_Section):
    special_tokens: bool = False
    """Add the template markers (### Instruction:, ### Response:, ### End) as special tokens, as
    Dolly did. The adapter then carries the resized embeddings and its own tokenizer."""


class LoraArgs(_Section):
    r: int = Field(8, ge=1)
    """Rank of the update matrices: adapter size and memory grow linearly with it."""
    alpha: float = Field(16.0, gt=0)
    """Scale of the update (alpha / r multiplies it)."""
    dropout: Annotated[float, _rule(lambda v: 0 <= v < 1, "must be in [0, 1), got {}")] = 0.05
    """Dropout on the LoRA branch's input."""
    target_modules: Annotated[
        list[str] | None, _rule(lambda v: v != [], "an empty list adapts nothing; use null for the default")
    ] = None
    """Module names to adapt; null picks per architecture (GPT-NeoX: query_key_value, Llama and
    kin: q_proj, k_proj, v_proj, o_proj)."""


class OptimArgs(_Section):
    name: Literal["adamw", "sgd"] = "adamw"
    """torch.optim.AdamW or SGD (with momentum 0.9) over the trainable parameters."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on the LoRA matrices."""
    betas: Annotated[
        list[float], _rule(lambda b: len(b) == 2 and all(0 <= x < 1 for x in b), "needs two values in [0, 1), got {}")
    ] = Field(default_factory=lambda: [0.9, 0.999])
    """AdamW's betas."""
    max_grad_norm: Annotated[float | None, _rule(lambda v: v is None or v > 0, "must be > 0 or null, got {}")] = 1.0
    """Clip the gradient norm to this; null does not clip."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule over the run (transformers.get_scheduler)."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up."""


class TrainArgs(_Section):
    epochs: int = Field(1, ge=1)
    """Passes over the training rows (ignored when max_steps is set)."""
    max_steps: Annotated[int | None, _rule(lambda v: v is None or v >= 1, "must be >= 1 or null, got {}")] = None
    """Optimizer steps to run; null runs ``epochs`` full passes."""
    batch_size: int = Field(4, ge=1)
    """Examples per forward pass (per process): activation memory grows linearly with it."""
    grad_accum: int = Field(1, ge=1)
    """Forward passes per optimizer step: the effective batch is batch_size x grad_accum x processes."""
    eval_every: int = Field(0, ge=0)
    """Score the held-out rows every N optimizer steps (and always before the first and after the
    last step); 0 only does the two."""
    checkpoint_every: int = Field(0, ge=0)
    """Write a resumable checkpoint every N optimizer steps; 0 writes none."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep."""


class TrainConfig(_Section):
    seed: int = 0
    """Seed of model initialisation (LoRA matrices, new token rows), dropout and data order."""
    model: ModelArgs = Field(default_factory=ModelArgs)
    data: DataArgs = Field(default_factory=DataArgs)
    template: TemplateArgs = Field(default_factory=TemplateArgs)
    lora: LoraArgs = Field(default_factory=LoraArgs)
    optim: OptimArgs = Field(default_factory=OptimArgs)
    train: TrainArgs = Field(default_factory=TrainArgs)

    def to_dict(self) -> dict:
        """Plain data (what the run folder's training_config.yaml and the manifest hold)."""
        return self.model_dump()


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config, apply ``key=value`` overrides, and validate everything at once."""
    path = Path(path)
    try:
        raw = _yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TrainConfigError(f"cannot read config {path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / Path(data["path"]).expanduser()).resolve())
    found = []
    for item in overrides:
        found += _apply_override(raw, item)
    return config_from_dict(raw, found, source=str(path))


def config_from_dict(raw: Any, found: list[str] | None = None, source: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain data; raise one TrainConfigError with ``found`` and every problem in ``raw``."""
    found = list(found or [])
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        found += problems(exc)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise TrainConfigError(f"{source}: {len(found)} problem(s):\n{lines}")
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
