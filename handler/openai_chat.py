"""OpenAI's chat completions: the request (into the handler's ParsedRequest), the replies (``chat.completion``,
``chat.completion.chunk`` server-sent events) and OpenAI's error object.

A body with ``messages`` is a chat request, on ``/invocations`` as on ``/v1/chat/completions`` (LMI's rule:
DJL Serving hands both routes' bodies to the handler unchanged, with nothing that names the route).

- **The adapter** is the request's ``model`` (as vLLM, TGI and LoRAX choose it): a registered adapter's name,
  or the base model under ``__base__``, its folder's or hub id's last part, the served model's name, or
  ``option.served_model_name``. Without ``model``, ``?adapter=`` then the SageMaker header
  ``X-Amzn-SageMaker-Adapter-Identifier`` name it, as for LMI's schema. Any other name is a 404.
- **The prompt** is the pipeline's (``Pipeline.chat_prompt``): the chat pipeline applies the tokenizer's chat
  template; the instruction pipeline puts the last user message (and system messages as its context) into
  its template.
- **Fields.** Supported: ``messages``, ``model``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``
  (default 1.0, so sampling; 0 is greedy), ``top_p``, ``seed``, ``n``, ``stop``, ``stream``,
  ``stream_options.include_usage``, ``logprobs``, ``top_logprobs``; vLLM's ``add_generation_prompt``,
  ``continue_final_message``, ``prompt_logprobs``, ``top_k``, ``min_tokens``, ``repetition_penalty``.
  Ignored: OpenAI's fields that change nothing here (:data:`IGNORED`), and those of :data:`NO_OP` at their
  no-op value. Anything else is a 400 naming it.
- **finish_reason** is OpenAI's: ``stop`` (end of sequence or a stop string) or ``length``.
- **Errors** are OpenAI's object ``{"error": {"message", "type", "param", "code"}}`` (vLLM's type names and
  the HTTP status as ``code``), on one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from . import errors
from .errors import BadRequest, HandlerError, NotFound
from .requests import (
    BASE_ADAPTER,
    GREEDY_TEMPERATURE,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MAX_TOP_N_TOKENS,
    MIN_REPETITION_PENALTY,
    GenerationParams,
    ParsedRequest,
    _bool,
    _number,
    _type_name,
)
from .results import GenerationResult, Token

log = logging.getLogger(__name__)

CHAT = "chat.completion"
CHUNK = "chat.completion.chunk"
SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
#: The handler's finish reasons as OpenAI names them (LMI's generic path says eos_token; vLLM says stop).
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
#: vLLM's error types by status.
ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    499: "CancelledError",
    504: "TimeoutError",
    507: "InsufficientStorageError",
}
SUPPORTED = {
    "messages",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "n",
    "stop",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
}
#: vLLM's extensions of the chat request that the handler serves.
EXTENSIONS = {
    "add_generation_prompt",
    "continue_final_message",
    "prompt_logprobs",
    "top_k",
    "min_tokens",
    "repetition_penalty",
}
#: OpenAI's fields that change nothing a model generates here: accepted with any value, and ignored.
IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "parallel_tool_calls",
}
#: OpenAI's fields accepted only at a value that asks for nothing (null always).
NO_OP = {
    "logit_bias": ({},),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "web_search_options": (),
    "reasoning_effort": (),
    "verbosity": (),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_KEYS = {"role", "content", "name"}


@dataclass
class ChatRequest:
    """What an OpenAI chat request asks beyond the generation parameters."""

    messages: list[dict]
    """Each ``{"role", "content"}``: roles system | user | assistant (``developer`` is system), text content."""
    model: str
    """The name the reply carries: the request's ``model``, else the adapter's or the base model's name."""
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    include_usage: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class ModelNames:
    """The names the base model answers to, and the one a reply carries for it."""

    base: frozenset[str]
    display: str

    @classmethod
    def of(cls, model_id: str, model_dir: str, served_model_name: str = "") -> ModelNames:
        """``__base__``, ``option.served_model_name``, the last part of ``option.model_id`` (a folder or
        a hub id) and the model dir's name as DJL Serving serves it (each non-word character ``_``)."""
        tail = os.path.basename(os.path.normpath(model_id)) if model_id else ""
        djl = re.sub(r"(\W|^_)", "_", os.path.basename(os.path.abspath(model_dir)), flags=re.ASCII)
        names = {BASE_ADAPTER, served_model_name, model_id, tail, djl} - {""}
        return cls(frozenset(names), served_model_name or tail or djl)


def is_chat(body: dict) -> bool:
    """LMI's rule: a body with ``messages`` is a chat completion request, whatever else it holds."""
    return "messages" in body


def parse_chat(
    body: dict,
    *,
    names: ModelNames,
    adapters: Collection[str],
    max_cap: int = 512,
    default_max: int = 64,
    max_n: int = 8,
    query_adapter: str | None = None,
    header_adapter: str | None = None,
) -> ParsedRequest:
    """Validate an OpenAI chat request; BadRequest (or NotFound for ``model``) naming the field at fault.
    ``adapters``: the registered adapters' names."""
    _check_fields(body)
    messages = _messages(body.get("messages"))
    adapter, model = _model(body.get("model"), names, adapters, query_adapter, header_adapter)
    n = _number(body, "n", 1, lo=1, integer=True, prefix="")
    if n > max_n:
        raise BadRequest(f"n must be <= {max_n} (option.max_inputs_per_request), got {n}", field="n")
    stream = _bool(body, "stream", False)
    max_tokens = _number(body, "max_tokens", None, lo=1, hi=max_cap, integer=True, prefix="")
    max_completion = _number(body, "max_completion_tokens", None, lo=1, hi=max_cap, integer=True, prefix="")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise BadRequest(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion}) differ: give one",
            field="max_completion_tokens",
        )
    max_new = max_completion or max_tokens or default_max
    min_new = _number(body, "min_tokens", 0, lo=0, hi=max_new, integer=True, prefix="")
    temperature = float(_number(body, "temperature", 1.0, lo=0.0, hi=2.0, prefix=""))
    top_p = float(_number(body, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True, prefix=""))
    top_k = _number(body, "top_k", 0, lo=-1, integer=True, prefix="")
    rep = float(_number(body, "repetition_penalty", 1.0, lo=MIN_REPETITION_PENALTY, hi=100.0, prefix=""))
    seed = _number(body, "seed", None, lo=0, hi=2**63 - 1 - max_n, integer=True, prefix="")
    stop = _stop(body.get("stop"))
    logprobs = _bool(body, "logprobs", False)
    top_logprobs = _number(body, "top_logprobs", 0, lo=0, hi=MAX_TOP_N_TOKENS, integer=True, prefix="")
    if top_logprobs and not logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", field="top_logprobs")
    prompt_logprobs = _number(body, "prompt_logprobs", None, lo=0, hi=MAX_TOP_N_TOKENS, integer=True, prefix="")
    continue_final = _bool(body, "continue_final_message", False)
    add_generation = _bool(body, "add_generation_prompt", not continue_final)
    if continue_final:
        if add_generation:
            raise BadRequest(
                "continue_final_message and add_generation_prompt cannot both be true", field="add_generation_prompt"
            )
        if messages[-1]["role"] != "assistant":
            raise BadRequest(
                "continue_final_message needs an assistant message last, whose content is continued",
                field="continue_final_message",
            )
    include_usage = _stream_options(body.get("stream_options"), stream)
    if stream and n > 1:
        raise BadRequest("stream takes n=1; ask for n > 1 without stream", field="n")
    if stream and prompt_logprobs is not None:
        raise BadRequest("prompt_logprobs is not available with stream: true", field="prompt_logprobs")
    do_sample = temperature >= GREEDY_TEMPERATURE
    params = GenerationParams(
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        do_sample=do_sample,
        temperature=temperature if do_sample else 1.0,
        top_p=top_p,
        top_k=max(top_k, 0),
        repetition_penalty=rep,
        seed=seed,
        stop=stop,
        top_n_tokens=top_logprobs,
        decoder_input_details=prompt_logprobs is not None,
        prompt_top_n=prompt_logprobs or 0,
    )
    item_params = None
    if n > 1 and do_sample and seed is not None:
        item_params = [replace(params, seed=seed + i) for i in range(n)]
    chat = ChatRequest(
        messages=messages,
        model=model,
        n=n,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        include_usage=include_usage,
        add_generation_prompt=add_generation,
        continue_final_message=continue_final,
        prompt_logprobs=prompt_logprobs,
    )
    return ParsedRequest(
        items=[messages] * n, adapters=[adapter] * n, params=params, stream=stream, chat=chat, item_params=item_params
    )


def _check_fields(body: dict) -> None:
    unknown = sorted(set(body) - SUPPORTED - EXTENSIONS - IGNORED - set(NO_OP))
    if unknown:
        hint = ""
        if {"inputs", "parameters", "adapters"} & set(unknown):
            hint = " (a body with 'messages' is an OpenAI chat request: give OpenAI's fields, the adapter as 'model')"
        raise BadRequest(f"unknown fields: {', '.join(unknown)}{hint}", field=unknown[0])
    for key, allowed in NO_OP.items():
        value = body.get(key)
        if value is not None and value not in allowed:
            what = f"only {' or '.join(json.dumps(a) for a in allowed)} (which asks for nothing)" if allowed else "null"
            raise BadRequest(f"{key} is not supported by this server: it accepts {what}", field=key)


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest(
            f"messages must be a non-empty list of {{role, content}} objects, got {_type_name(raw)}", field="messages"
        )
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{where} must be an object with role and content, got {_type_name(m)}", field=where)
        extra = sorted(set(m) - MESSAGE_KEYS)
        if extra:
            raise BadRequest(
                f"{where} has fields this server does not serve: {', '.join(extra)} (tools are not supported)",
                field=f"{where}.{extra[0]}",
            )
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", field=f"{where}.role")
        out.append({"role": ROLES[role], "content": _content(m.get("content"), f"{where}.content")})
    return out


def _content(raw, where: str) -> str:
    """A message's text: a string, or text parts joined by a newline (as LMI and vLLM join them)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw:
        texts = []
        for j, part in enumerate(raw):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(
                    f'{where}[{j}] must be a text part {{"type": "text", "text": "..."}} (only text is served)',
                    field=f"{where}[{j}]",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRequest(f"{where} must be a string or a list of text parts, got {_type_name(raw)}", field=where)


def _model(raw, names: ModelNames, adapters: Collection[str], query, header) -> tuple[str, str]:
    """(the adapter, "" for the base; the name the reply carries)."""
    if raw is not None and not isinstance(raw, str):
        raise BadRequest(f"model must be a string, got {_type_name(raw)}", field="model")
    if raw:
        if raw in names.base:
            return "", raw
        if raw in adapters:
            return raw, raw
        base = sorted(n for n in names.base - {BASE_ADAPTER} if "/" not in n)  # a path or hub id: its last part
        served = ", ".join(base + sorted(adapters))
        raise NotFound(
            f"The model {raw!r} does not exist: name a registered adapter or the base model ({served}; or '__base__')",
            field="model",
        )
    chosen = (query if query is not None else header) or ""
    chosen = "" if chosen.strip() == BASE_ADAPTER else chosen.strip()
    return chosen, chosen or names.display


def _stop(raw) -> tuple[str, ...]:
    if raw is None:
        return ()
    stop = [raw] if isinstance(raw, str) else raw
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest(f"stop must be a string or a list of strings, got {_type_name(raw)}", field="stop")
    if len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(f"stop has {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed", field="stop")
    if any(not s or len(s) > MAX_STOP_LENGTH for s in stop):
        raise BadRequest(f"stop strings must be 1..{MAX_STOP_LENGTH} characters", field="stop")
    return tuple(stop)


def _stream_options(raw, stream: bool) -> bool:
    if raw is None:
        return False
    if not stream:
        raise BadRequest("stream_options needs stream: true", field="stream_options")
    if not isinstance(raw, dict):
        raise BadRequest(f"stream_options must be an object, got {_type_name(raw)}", field="stream_options")
    extra = sorted(set(raw) - {"include_usage", "continuous_usage_stats", "include_obfuscation"})
    if extra:
        raise BadRequest(f"stream_options has unknown fields: {', '.join(extra)}", field=f"stream_options.{extra[0]}")
    if raw.get("continuous_usage_stats"):
        raise BadRequest("stream_options.continuous_usage_stats is not supported", field="stream_options")
    return _bool(raw, "include_usage", False, "stream_options.")


# ---- replies ---------------------------------------------------------------------------------------


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def finish_reason(reason: str | None) -> str | None:
    return FINISH_REASONS.get(reason)


def _bytes(text: str) -> list[int] | None:
    return list(text.encode("utf-8")) if text else None


def logprob_entry(tok: Token, top: list[Token] | None) -> dict:
    """One generated token in ``logprobs.content``: its text, log-probability, UTF-8 bytes and the most
    likely tokens at its position (``top_logprobs``)."""
    return {
        "token": tok.text,
        "logprob": tok.log_prob,
        "bytes": _bytes(tok.text),
        "top_logprobs": [{"token": t.text, "logprob": t.log_prob, "bytes": _bytes(t.text)} for t in top or []],
    }


def prompt_logprobs_json(res: GenerationResult) -> list[dict | None]:
    """vLLM's ``prompt_logprobs``: per prompt token, null for the first, else ``{"<id>": {"logprob", "rank",
    "decoded_token"}}`` with the prompt's own token first, then the most likely tokens there."""
    out: list[dict | None] = []
    for k, tok in enumerate(res.prefill or []):
        if k == 0:
            out.append(None)
            continue
        entry = {str(tok.id): {"logprob": tok.log_prob, "rank": tok.rank, "decoded_token": tok.text}}
        for rank, alt in enumerate((res.prompt_top or [])[k] if res.prompt_top else [], start=1):
            entry.setdefault(str(alt.id), {"logprob": alt.log_prob, "rank": rank, "decoded_token": alt.text})
        out.append(entry)
    return out


def completion(chat: ChatRequest, results: list[GenerationResult], encode: Callable[[str], str]) -> dict:
    """The ``chat.completion`` of a request's ``n`` results (``encode``: the pipeline's encode_response)."""
    choices = []
    for i, res in enumerate(results):
        logprobs = None
        if chat.logprobs:
            tops = res.top_tokens or [None] * len(res.tokens or [])
            logprobs = {"content": [logprob_entry(t, top) for t, top in zip(res.tokens or [], tops)]}
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": encode(res.text)},
                "logprobs": logprobs,
                "finish_reason": finish_reason(res.finish_reason),
            }
        )
    prompt = results[0].prompt_tokens
    generated = sum(r.generated_tokens for r in results)
    reply = {
        "id": new_id(),
        "object": CHAT,
        "created": int(time.time()),
        "model": chat.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated},
    }
    if chat.prompt_logprobs is not None:
        reply["prompt_logprobs"] = prompt_logprobs_json(results[0])
    return reply


def sse(obj: dict) -> bytes:
    return ("data: " + json.dumps(obj, ensure_ascii=False) + "\n\n").encode("utf-8")


class ChatStreamWriter:
    """The server-sent events of one streamed chat request: a first chunk with the role, a chunk per
    report of settled tokens, a last chunk with ``finish_reason``, the usage chunk when asked for, then
    ``data: [DONE]``. The deltas add up to the non-streamed ``content``: each is what the pipeline's
    ``encode_response`` of the text so far adds (a trailing space waits for the text after it)."""

    def __init__(self, chat: ChatRequest, encode: Callable[[str], str], tokenizer):
        self.chat, self.encode, self.tokenizer = chat, encode, tokenizer
        self.id, self.created = new_id(), int(time.time())
        self.raw = ""
        self.sent = ""

    def _chunk(self, delta: dict, logprobs=None, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse(self._envelope(choices=[choice]))

    def _envelope(self, **fields) -> dict:
        return {"id": self.id, "object": CHUNK, "created": self.created, "model": self.chat.model, **fields}

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def _delta(self, text: str) -> str:
        shown = self.encode(text)
        if not shown.startswith(self.sent):
            log.warning("the pipeline's encode_response changed text already streamed; the rest is not streamed")
            return ""
        delta, self.sent = shown[len(self.sent) :], shown
        return delta

    def _logprobs(self, seq, pairs, eos: bool = False) -> dict | None:
        if not self.chat.logprobs:
            return None
        tokens = [(Token(seq.tokens[i], text, seq.logprobs[i]), i) for i, text in pairs]
        if eos and seq.eos is not None:
            tokens.append((Token(seq.eos[0], "", seq.eos[1], special=True), len(seq.tokens)))
        return {"content": [logprob_entry(t, self._top(seq, i)) for t, i in tokens]}

    def _top(self, seq, i: int) -> list[Token] | None:
        if not self.chat.top_logprobs or i >= len(seq.top):
            return None
        return [Token(t, self.tokenizer.decode([t]), lp) for t, lp in seq.top[i]]

    def tokens(self, seq, pairs: list[tuple[int, str]]) -> list[bytes]:
        self.raw += "".join(text for _, text in pairs)
        delta = self._delta(self.raw)
        logprobs = self._logprobs(seq, pairs)
        if not delta and logprobs is None:
            return []
        return [self._chunk({"content": delta}, logprobs)]

    def final(self, seq, pairs: list[tuple[int, str]], failure: BaseException | None) -> list[bytes]:
        if failure is not None:
            out = self.tokens(seq, pairs)
            return out + [sse(error_json(failure, chat=True)[1]), DONE]
        delta = self._delta(seq.text)
        out = [self._chunk({"content": delta} if delta else {}, self._logprobs(seq, pairs, eos=True),
                           finish_reason(seq.finish_reason))]  # fmt: skip
        if self.chat.include_usage:
            generated = len(seq.tokens) + (seq.eos is not None)
            prompt = len(seq.prompt_ids)
            usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
            out.append(sse(self._envelope(choices=[], usage=usage)))
        return out + [DONE]


# ---- errors ------------------------------------------------------------------------------------------


def mark(exc: BaseException) -> BaseException:
    """Flag an error as a chat request's (its reply is OpenAI's error object)."""
    try:
        exc.openai_chat = True
    except AttributeError:  # an exception type without a __dict__
        pass
    return exc


def error_json(exc: BaseException, chat: bool = False) -> tuple[int, dict]:
    """Status and body of an error: OpenAI's error object for a chat request (``chat``, or an error
    :func:`mark` flagged), the handler's own body otherwise."""
    code, body = errors.error_json(exc)
    if not (chat or getattr(exc, "openai_chat", False)):
        return code, body
    message = " ".join(str(body.get("error", "")).split())  # one line: real DJL answers 500 to a newline
    kind = ERROR_TYPES.get(code) or ("InternalServerError" if code >= 500 else "BadRequestError")
    field = exc.field if isinstance(exc, HandlerError) else None
    return code, {"error": {"message": message, "type": kind, "param": field, "code": code}}


def error_message(body: dict) -> str:
    """The message of either error body (DJL's async mode sends only this, as ``error``)."""
    err = body.get("error")
    return err.get("message", "") if isinstance(err, dict) else str(err)
