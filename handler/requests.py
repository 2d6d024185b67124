"""Request parsing and validation (DJL LMI schema): one HTTP body -> generation items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
BASE_ADAPTER = "__base__"
#: Temperatures below this are greedy (as in vLLM): dividing logits by less overflows to inf and
#: sampling then fails on NaN probabilities.
GREEDY_TEMPERATURE = 1e-5
#: A repetition penalty divides (or multiplies) logits; a smaller one overflows them the same way.
MIN_REPETITION_PENALTY = 0.01


@dataclass(frozen=True)
class GenerationParams:
    """Validated sampling parameters; requests with equal params share one ``generate`` call."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0
    """How many most likely tokens (with log-probabilities) to report per generated position."""
    decoder_input_details: bool = False
    """Report the prompt's tokens with their log-probabilities (LMI's ``prefill``)."""
    prompt_top_n: int = 0
    """With ``decoder_input_details``: also each prompt position's most likely tokens (vLLM's
    ``prompt_logprobs``)."""


@dataclass
class ParsedRequest:
    """One client request: its items (one per input string) and how to shape the reply."""

    items: list[Any]
    adapters: list[str]
    params: GenerationParams
    is_list: bool = False
    stream: bool = False
    details: bool = False
    return_full_text: bool = False
    chat: Any = None
    """An OpenAI chat completion request (``openai_chat.ChatRequest``): the reply is OpenAI's schema."""
    item_params: list[GenerationParams] | None = None
    """Per-item parameters when they differ (a chat request's ``n`` rows sample with seeds seed+i)."""

    def params_of(self, item: int) -> GenerationParams:
        return self.item_params[item] if self.item_params is not None else self.params

    @property
    def wants_tokens(self) -> bool:
        """The reply reports tokens (with their log-probabilities), not only text."""
        return (
            self.details
            or self.stream
            or self.params.top_n_tokens > 0
            or self.params.decoder_input_details
            or bool(self.chat is not None and self.chat.logprobs)
        )


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _number(params: dict, key: str, default, lo=None, hi=None, integer=False, lo_open=False, prefix="parameters."):
    if key not in params or params[key] is None:
        return default
    value, name = params[key], prefix + key
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{name} must be {kind}, got {_type_name(value)}", field=name)
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be finite", field=name)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise BadRequest(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}", field=name)
    if hi is not None and value > hi:
        raise BadRequest(f"{name} must be <= {hi}, got {value}", field=name)
    return value


def _bool(mapping: dict, key: str, default: bool, prefix: str = "") -> bool:
    value = mapping.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{prefix}{key} must be true or false, got {_type_name(value)}", field=prefix + key)
    return value


KNOWN_PARAMETERS = {
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "stop_sequences",
    "return_full_text",
    "details",
    "decoder_input_details",
    "top_n_tokens",
}
#: The most ``top_n_tokens`` a request may ask for (OpenAI's top_logprobs allows 20 too).
MAX_TOP_N_TOKENS = 20
KNOWN_FIELDS = {"inputs", "parameters", "adapters", "stream"}


def parse_params(raw: Any, max_cap: int, default_max: int, details: bool = False) -> tuple[GenerationParams, dict]:
    """``details``: its default (LMI's tgi_compat turns it on)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest(f"'parameters' must be an object, got {_type_name(raw)}", field="parameters")
    unknown = sorted(set(raw) - KNOWN_PARAMETERS)
    if unknown:
        raise BadRequest(
            f"unknown parameters: {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_PARAMETERS))}",
            field="parameters." + unknown[0],
        )
    max_new = _number(raw, "max_new_tokens", default_max, lo=1, hi=max_cap, integer=True)
    min_new = _number(raw, "min_new_tokens", 0, lo=0, hi=max_new, integer=True)
    do_sample = _bool(raw, "do_sample", False, "parameters.")
    temperature = float(_number(raw, "temperature", 1.0, lo=0.0, hi=100.0))
    if "temperature" in raw and raw["temperature"] not in (None, 0) and "do_sample" not in raw:
        do_sample = True  # TGI/LMI convention: a temperature asks for sampling
    if temperature < GREEDY_TEMPERATURE:
        do_sample, temperature = False, 1.0
    top_p = float(_number(raw, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True))
    top_k = _number(raw, "top_k", 0, lo=0, integer=True)
    rep = float(_number(raw, "repetition_penalty", 1.0, lo=MIN_REPETITION_PENALTY, hi=100.0))
    seed = _number(raw, "seed", None, lo=0, hi=2**63 - 1, integer=True)
    if raw.get("stop") is not None and raw.get("stop_sequences") is not None:
        raise BadRequest(
            "give parameters.stop_sequences or its alias parameters.stop, not both", field="parameters.stop"
        )
    stop = raw.get("stop_sequences") or raw.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("parameters.stop must be a string or a list of strings", field="parameters.stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(
            f"parameters.stop has {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed", field="parameters.stop"
        )
    if any(len(s) > MAX_STOP_LENGTH or not s for s in stop):
        raise BadRequest(f"parameters.stop strings must be 1..{MAX_STOP_LENGTH} characters", field="parameters.stop")
    params = GenerationParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=rep,
        seed=seed,
        stop=tuple(stop),
        top_n_tokens=_number(raw, "top_n_tokens", 0, lo=0, hi=MAX_TOP_N_TOKENS, integer=True),
        decoder_input_details=_bool(raw, "decoder_input_details", False, "parameters."),
    )
    flags = {
        "details": _bool(raw, "details", details, "parameters."),
        "return_full_text": _bool(raw, "return_full_text", False, "parameters."),
    }
    return params, flags


def parse_body(data: bytes | None, **options) -> ParsedRequest:
    """Decode and parse one LMI request body (``options``: :func:`parse_lmi`'s); BadRequest names the field."""
    return parse_lmi(decode_json(data), **options)


def decode_json(data: bytes | None) -> dict:
    """The request body as a JSON object (valid UTF-8, no lone surrogates); BadRequest otherwise."""
    if not data:
        raise BadRequest("empty request body; expected JSON with an 'inputs' field", field="body")
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}", field="body") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {_type_name(body)}", field="body")
    try:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"): valid JSON, but no tokenizer takes it.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "request body has a lone surrogate escape (such as \\ud800): strings must be valid Unicode", field="body"
        ) from None
    return body


def parse_lmi(
    body: dict,
    *,
    input_field: str = "inputs",
    max_cap: int = 512,
    default_max: int = 64,
    query_adapter: str | None = None,
    header_adapter: str | None = None,
    details: bool = False,
) -> ParsedRequest:
    """A decoded body in LMI's schema (``inputs``, ``parameters``, ``adapters``, ``stream``)."""
    known = KNOWN_FIELDS | {input_field}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}; known: {', '.join(sorted(known))}", field=unknown[0])
    if input_field not in body:
        raise BadRequest(f"missing required field '{input_field}'", field=input_field)
    raw = body[input_field]
    is_list = input_field == "inputs" and isinstance(raw, list)
    items = raw if is_list else [raw]
    if is_list and not items:
        raise BadRequest("'inputs' must not be an empty list", field="inputs")
    if input_field == "inputs":
        for i, item in enumerate(items):
            if not isinstance(item, str):
                where = f"inputs[{i}]" if is_list else "inputs"
                raise BadRequest(f"{where} must be a string, got {_type_name(item)}", field=where)
            if not item.strip():
                where = f"inputs[{i}]" if is_list else "inputs"
                raise BadRequest(f"{where} must not be empty", field=where)
    params, flags = parse_params(body.get("parameters"), max_cap, default_max, details)
    stream = _bool(body, "stream", False)
    if stream and is_list:
        raise BadRequest("'stream' needs a single input, not a list", field="stream")
    adapters = _parse_adapters(body.get("adapters"), len(items), is_list, query_adapter, header_adapter)
    return ParsedRequest(items=items, adapters=adapters, params=params, is_list=is_list, stream=stream, **flags)


def _parse_adapters(raw, n: int, is_list: bool, query: str | None, header: str | None) -> list[str]:
    """Per-item adapter names; body field first, then ``?adapter=``, then the SageMaker header."""
    if raw is None:
        name = query if query is not None else header
        return [_norm(name)] * n
    if isinstance(raw, str):
        return [_norm(raw)] * n
    if isinstance(raw, list):
        if not is_list:
            raise BadRequest("'adapters' is a list but 'inputs' is a single string", field="adapters")
        if len(raw) != n:
            raise BadRequest(f"'adapters' has {len(raw)} names but 'inputs' has {n} items", field="adapters")
        if not all(isinstance(a, str) for a in raw):
            raise BadRequest("'adapters' items must be strings", field="adapters")
        return [_norm(a) for a in raw]
    raise BadRequest(f"'adapters' must be a string or a list of strings, got {_type_name(raw)}", field="adapters")


def _norm(name: str | None) -> str:
    name = (name or "").strip()
    return "" if name == BASE_ADAPTER else name
