"""Streamed generation: JSON lines, a few tokens per chunk, and a final line with details."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from transformers import TextIteratorStreamer

from .errors import GenerationTimeout, error_json
from .generation import GenerationResult
from .pipelines import cut_at_stop, stop_hold


def stream_generation(
    generate: Callable[[TextIteratorStreamer, float | None], GenerationResult],
    tokenizer,
    stops: tuple[str, ...],
    encode_response: Callable[[str], str],
    adapter: str,
    *,
    predict_timeout: int,
    deadline: float | None = None,
):
    """Yield ``{"token": {"text": ...}}`` lines, then ``{"generated_text": ..., "details": ...}``.

    ``generate(streamer, max_time)`` runs the one-row generation (in a thread here) and returns its
    result; ``encode_response`` is the pipeline's. Text that could still turn out to be the start
    of a stop string is held back until it is known not to be one, so the client never sees the
    ``### End`` marker.
    """
    hold = stop_hold(stops)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    box: dict = {}

    def run():
        try:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            box["result"] = generate(streamer, left)
        except Exception as exc:  # reported in the final line; the stream must still end
            box["error"] = exc
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text, sent, first = "", 0, None
    for piece in streamer:
        text += piece
        visible = cut_at_stop(text, stops)[0]
        limit = len(visible) if len(visible) < len(text) else max(sent, len(text) - hold)
        if limit > sent:
            first = first or time.perf_counter() - start
            yield _line({"token": {"text": visible[sent:limit]}})
            sent = limit
        if len(visible) < len(text):
            break
    thread.join()
    tail = cut_at_stop(text, stops)[0][sent:]
    if tail and "error" not in box:
        yield _line({"token": {"text": tail}})
    if "error" not in box and box["result"].finish_reason == "time":
        res = box["result"]
        box["error"] = GenerationTimeout.after(res.seconds, res.generated_tokens, predict_timeout)
    if "error" in box:
        code, body = error_json(box["error"])
        yield _line(body)
        return
    res = box["result"]
    final = encode_response(res.text)
    details = res.details(adapter)
    details["time_to_first_chunk"] = round(first or res.seconds, 4)
    yield _line({"generated_text": final, "details": details})


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
