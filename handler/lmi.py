"""LMI's response schema, as DJL Serving 0.36.0's documented formatters write it (``output_formatter.py``):
whole replies, ``details``, token lines, SSE framing and ``option.tgi_compat``.

loraship adds its own figures to ``details`` after LMI's keys (``prompt_tokens``, ``adapter``,
``inference_seconds``, ``batch_size``; ``time_to_first_chunk`` when streamed). Errors keep the handler's own
statuses and body (``errors.py``): LMI answers every bad request with 424.
"""

from __future__ import annotations

import json

from .results import GenerationResult, Token

#: The handler's finish reasons as LMI names them.
FINISH_REASONS = {"eos": "eos_token", "stop": "stop_sequence", "length": "length"}
JSONLINES = "application/jsonlines"
SSE = "text/event-stream"


def finish_reason(reason: str | None) -> str:
    return FINISH_REASONS.get(reason, "error")


def token_json(tok: Token, tgi: bool = False) -> dict:
    """``{"id", "text", "log_prob"}`` (``special_token`` for a special token); TGI's key names with ``tgi``."""
    out = {"id": tok.id, "text": tok.text, ("logprob" if tgi else "log_prob"): tok.log_prob}
    if tok.special:
        out["special" if tgi else "special_token"] = True
    return out


def details(
    res: GenerationResult,
    inputs: str,
    *,
    adapter: str,
    batch_size: int,
    tgi: bool = False,
    include_tokens: bool = True,
) -> dict:
    """LMI's ``details`` (streamed ones carry no ``tokens``: the lines had them), then loraship's figures."""
    out = {
        "finish_reason": finish_reason(res.finish_reason),
        "generated_tokens": res.generated_tokens,
        "inputs": inputs,
    }
    if include_tokens:
        out["tokens"] = [token_json(t, tgi) for t in res.tokens or []]
    if res.prefill is not None:
        out["prefill"] = [token_json(t, tgi) for t in res.prefill]
    if res.top_tokens is not None:
        out["top_tokens"] = [[token_json(t, tgi) for t in step] for step in res.top_tokens]
    out.update(
        prompt_tokens=res.prompt_tokens,
        adapter=adapter or "__base__",
        inference_seconds=round(res.seconds, 4),
        batch_size=batch_size,
    )
    return out


def line(obj: dict, sse: bool = False) -> bytes:
    """One streamed message: a JSON line, or an SSE event (``data: {...}`` and a blank line; LMI sends no
    ``[DONE]``)."""
    text = json.dumps(obj, ensure_ascii=False) + "\n"
    return (("data: " + text + "\n") if sse else text).encode("utf-8")
