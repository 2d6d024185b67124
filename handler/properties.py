"""Typed serving options, parsed once from DJL's initialisation properties.

DJL hands the handler every ``option.*`` key of ``serving.properties`` (prefix stripped) plus
``model_dir`` and ``device_id`` on the first call; later calls do not carry them. Keys this handler
does not read (DJL's own, such as ``engine`` or ``entryPoint``) are kept in ``extra``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from .errors import ConfigError
from .settings import Settings, problems

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("", "bitsandbytes8", "bitsandbytes4")
Positive = Annotated[int, Field(ge=1)]


class ServingOptions(Settings):
    """What the handler reads from ``serving.properties``; each field is ``option.<name>``."""

    model_id: str = ""
    """Local path (absolute, or relative to the model dir) or a hub id where a hub is reachable."""
    model_dir: str = "."
    pipeline: str = "instruction"
    """A built-in pipeline name, a ``module:Class`` path, or a ``loraship.pipelines`` entry point."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto | float32 | bfloat16 | float16. auto is float32 on CPU, bfloat16 on a GPU that has it."""
    max_new_tokens: Positive = 512
    """Upper bound for a request's ``max_new_tokens``."""
    default_max_new_tokens: Positive = 64
    adapter_checkpoint: str = ""
    """The seed's single adapter: a folder loaded at start-up under ``adapter_name``."""
    adapter_name: str = ""
    enable_lora: bool = False
    adapter_roots: str = ""
    """Comma-separated folders adapters may be registered from, besides the model dir."""
    max_adapters: Annotated[int, Field(ge=0)] = 0
    """How many adapters stay loaded (LRU); evicted ones reload from disk on demand. 0: no bound."""
    pinned_adapters: str = ""
    """Comma-separated adapter names never evicted (the seed adapter always is)."""
    allow_pickle_adapters: bool = False
    """Accept adapter_model.bin (pickle, can run code when loaded); safetensors only by default."""
    max_inputs_per_request: Positive = 8
    """Strings a request's ``inputs`` list may hold (TGI's --max-client-batch-size; its default is 4)."""
    max_request_tokens: Positive = 4096
    """What one request may cost: over its inputs, prompt tokens plus ``max_new_tokens``. 4096 is about
    80 s of generation for the default model on one CPU thread (README, Admission limits)."""
    max_batch_total_tokens: Positive = 4096
    """What one ``generate`` call may cost: rows x (longest prompt + max_new_tokens). A batch that costs
    more runs in parts, one after the other."""
    async_mode: bool = False
    """DJL's async mode: set by ``loraship build --batching continuous`` (model.py is then the async entry)."""
    max_rolling_batch_size: Positive = 8
    """Continuous batching (option.async_mode=true): rows decoding together at most (LMI's name)."""
    decode: Literal["auto", "eager", "compiled"] = "auto"
    """auto | eager | compiled: how a step of one row on the base model runs under continuous batching
    (and static batching's streams). compiled: torch.compile over a static cache, compiled at start-up
    (continuous batching) or in the background at the first stream (static). auto is compiled on CPU
    where a C++ compiler is found."""
    max_lora_rank: Positive = 16
    """With ``enable_lora``: the compiled step's adapter slot rank (LMI's and vLLM's name and default). A
    row alone on an adapter of at most this rank (a plain LoRA on linear layers) takes the compiled step too;
    others decode eagerly. A larger slot costs each adapter step more."""
    lora_target_modules: str = ""
    """With ``enable_lora``: comma-separated module name suffixes (e.g. ``q_proj,v_proj``) that get the
    compiled step's adapter slot (vLLM's ``target_modules``); empty: every linear layer but the output head.
    An adapter on other modules decodes eagerly; fewer slots cost each adapter step less."""
    decode_tokens: Positive = 512
    """The compiled step's static cache length: a row longer than this decodes eagerly from there on (the
    step attends over the whole cache, so a longer cache costs every step)."""
    metrics: bool = True
    """Write per-request metrics as DJL ``[METRICS]`` lines (served at /server/metrics when
    SERVING_PROMETHEUS=true); false writes none."""
    predict_timeout: Positive = 120
    """DJL's own limit (seconds); generation stops in time to answer before it, so DJL never kills a
    worker for a slow batch."""
    output_formatter: Literal["", "json", "jsonlines", "sse"] = ""
    """LMI's reply framing: json (whole replies; streams are JSON lines), jsonlines (every reply streams as
    JSON lines), sse (streams are server-sent events). Unset: json, or sse under tgi_compat."""
    tgi_compat: bool = False
    """LMI's TGI compatibility: whole replies in a one-element list, details on by default, TGI's token key
    names (``logprob``, ``special``), and streams as server-sent events."""
    trust_remote_code: bool = False
    device_map: str = ""
    quantize: Literal["", "bitsandbytes8", "bitsandbytes4"] = ""
    device_id: Annotated[int, Field(ge=-1)] = -1
    extra: dict[str, Any] = Field(default_factory=dict)
    """DJL's keys and any this handler does not read, as given."""

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value, info):
        if not isinstance(value, str):
            return value
        value = value.strip()
        # serving.properties writes an unset flag as an empty value
        if value == "" and isinstance(cls.model_fields[info.field_name].default, bool):
            return False
        return value

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> ServingOptions:
        """Parse and validate; raise one ConfigError that lists every problem, by its option.* key."""
        known = {k: v for k, v in props.items() if k in cls.model_fields and k != "extra"}
        found: list[str] = []
        try:
            opts = cls(**known, extra={k: v for k, v in props.items() if k not in known})
        except ValidationError as exc:
            opts = None
            found += problems(exc, prefix="option.")
        if not str(props.get("model_id", "")).strip():
            found.append("option.model_id: is required (a local model folder or a hub id)")
        if opts is not None and opts.max_request_tokens > opts.max_batch_total_tokens:
            found.append(
                f"option.max_request_tokens ({opts.max_request_tokens}) must not exceed "
                f"option.max_batch_total_tokens ({opts.max_batch_total_tokens}): a request must fit "
                "one generate call"
            )
        if found:
            raise ConfigError("invalid serving.properties: " + "; ".join(found))
        if opts.default_max_new_tokens > opts.max_new_tokens:
            opts.default_max_new_tokens = opts.max_new_tokens
        if opts.adapter_checkpoint and not opts.adapter_name:
            opts.adapter_name = os.path.basename(os.path.normpath(opts.adapter_checkpoint))
        return opts

    @property
    def time_budget(self) -> float:
        """Seconds generation may take in one call: predict_timeout less a margin to send the answer."""
        return max(1.0, self.predict_timeout - max(2.0, 0.1 * self.predict_timeout))

    @property
    def sse(self) -> bool:
        """Streams go out as server-sent events."""
        return self.output_formatter == "sse" or (self.tgi_compat and self.output_formatter != "jsonlines")

    @property
    def roots(self) -> list[str]:
        return [self.model_dir] + [self.resolve(r.strip()) for r in self.adapter_roots.split(",") if r.strip()]

    def resolve(self, path: str) -> str:
        """A path option made absolute against the model dir (hub ids pass through)."""
        if not path or os.path.isabs(path):
            return path
        candidate = os.path.join(self.model_dir, path)
        return candidate if os.path.exists(candidate) else path
