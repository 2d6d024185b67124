"""Typed serving options, parsed once from DJL's initialisation properties.

DJL hands the handler every ``option.*`` key of ``serving.properties`` (prefix stripped) plus
``model_dir`` and ``device_id`` on the first call; later calls do not carry them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from .errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("", "bitsandbytes8", "bitsandbytes4")


def _bool(key: str, value: str, problems: list[str]) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    problems.append(f"option.{key} must be true or false, got {value!r}")
    return False


def _int(key: str, value: str, problems: list[str], minimum: int = 0) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        problems.append(f"option.{key} must be an integer, got {value!r}")
        return minimum
    if n < minimum:
        problems.append(f"option.{key} must be >= {minimum}, got {n}")
    return n


@dataclass
class ServingOptions:
    """What the handler reads from ``serving.properties``; each field is ``option.<name>``."""

    model_id: str = ""
    """Local path (absolute, or relative to the model dir) or a hub id where a hub is reachable."""
    model_dir: str = "."
    pipeline: str = "instruction"
    """A built-in pipeline name, a ``module:Class`` path, or a ``loraship.pipelines`` entry point."""
    dtype: str = "auto"
    """auto | float32 | bfloat16 | float16. auto is float32 on CPU, bfloat16 on a GPU that has it."""
    max_new_tokens: int = 512
    """Upper bound for a request's ``max_new_tokens``."""
    default_max_new_tokens: int = 64
    adapter_checkpoint: str = ""
    """The seed's single adapter: a folder loaded at start-up under ``adapter_name``."""
    adapter_name: str = ""
    enable_lora: bool = False
    adapter_roots: str = ""
    """Comma-separated folders adapters may be registered from, besides the model dir."""
    max_adapters: int = 0
    """How many adapters stay loaded (LRU); evicted ones reload from disk on demand. 0: no bound."""
    pinned_adapters: str = ""
    """Comma-separated adapter names never evicted (the seed adapter always is)."""
    allow_pickle_adapters: bool = False
    """Accept adapter_model.bin (pickle, can run code when loaded); safetensors only by default."""
    max_inputs_per_request: int = 8
    """Strings a request's ``inputs`` list may hold (TGI's --max-client-batch-size; its default is 4)."""
    max_request_tokens: int = 4096
    """What one request may cost: over its inputs, prompt tokens plus ``max_new_tokens``. 4096 is about
    80 s of generation for the default model on one CPU thread (README, Admission limits)."""
    max_batch_total_tokens: int = 4096
    """What one ``generate`` call may cost: rows x (longest prompt + max_new_tokens). A batch that costs
    more runs in parts, one after the other."""
    predict_timeout: int = 120
    """DJL's own limit (seconds); generation stops in time to answer before it, so DJL never kills a
    worker for a slow batch."""
    trust_remote_code: bool = False
    device_map: str = ""
    quantize: str = ""
    device_id: int = -1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> ServingOptions:
        """Parse and validate; raise one ConfigError that lists every problem."""
        problems: list[str] = []
        opts = cls()
        known = {f.name for f in fields(cls)} - {"extra"}
        for key, value in props.items():
            if key not in known:
                opts.extra[key] = value
                continue
            default = getattr(opts, key)
            if isinstance(default, bool):
                setattr(opts, key, _bool(key, value, problems))
            elif isinstance(default, int):
                minimum = {"device_id": -1, "max_adapters": 0}.get(key, 1)
                setattr(opts, key, _int(key, value, problems, minimum=minimum))
            else:
                setattr(opts, key, str(value).strip())
        if not opts.model_id:
            problems.append("option.model_id is required (a local model folder or a hub id)")
        if opts.dtype not in DTYPES:
            problems.append(f"option.dtype must be one of {', '.join(DTYPES)}, got {opts.dtype!r}")
        if opts.quantize not in QUANTIZE:
            problems.append(
                f"option.quantize must be one of {', '.join(q for q in QUANTIZE if q)}, got {opts.quantize!r}"
            )
        if opts.max_request_tokens > opts.max_batch_total_tokens:
            problems.append(
                f"option.max_request_tokens ({opts.max_request_tokens}) must not exceed "
                f"option.max_batch_total_tokens ({opts.max_batch_total_tokens}): a request must fit "
                "one generate call"
            )
        if opts.default_max_new_tokens > opts.max_new_tokens:
            opts.default_max_new_tokens = opts.max_new_tokens
        if bool(opts.adapter_checkpoint) != bool(opts.adapter_name) and opts.adapter_checkpoint:
            opts.adapter_name = os.path.basename(os.path.normpath(opts.adapter_checkpoint))
        if problems:
            raise ConfigError("invalid serving.properties: " + "; ".join(problems))
        return opts

    @property
    def time_budget(self) -> float:
        """Seconds generation may take in one call: predict_timeout less a margin to send the answer."""
        return max(1.0, self.predict_timeout - max(2.0, 0.1 * self.predict_timeout))

    @property
    def roots(self) -> list[str]:
        return [self.model_dir] + [self.resolve(r.strip()) for r in self.adapter_roots.split(",") if r.strip()]

    def resolve(self, path: str) -> str:
        """A path option made absolute against the model dir (hub ids pass through)."""
        if not path or os.path.isabs(path):
            return path
        candidate = os.path.join(self.model_dir, path)
        return candidate if os.path.exists(candidate) else path
