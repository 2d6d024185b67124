"""Streamed generation: JSON lines, a few tokens per chunk, and a final line with details."""

from __future__ import annotations

import json
import threading
import time

from transformers import TextIteratorStreamer

from .errors import GenerationTimeout, error_json
from .pipelines import cut_at_stop


def stream_generation(service, req, prompt: str, deadline: float | None = None):
    """Yield ``{"token": {"text": ...}}`` lines, then ``{"generated_text": ..., "details": ...}``.

    Text that could still turn out to be the start of a stop string is held back until it is
    known not to be one, so the client never sees the ``### End`` marker.
    """
    gen = service.generator
    stops = gen.stop_sequences + req.params.stop
    hold = max((len(s) for s in stops), default=1) - 1
    tokenizer = service.adapters.tokenizer_for(req.adapters[0])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    box: dict = {}

    def run():
        try:
            service.adapters.ensure_loaded(req.adapters)
            gen.model = service.adapters.model
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            box["result"] = gen.generate(
                [prompt], req.params, req.adapters[:1], streamer=streamer, tokenizer=tokenizer, max_time=left
            )[0]
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
        box["error"] = GenerationTimeout.after(res.seconds, res.generated_tokens, service.options.predict_timeout)
    if "error" in box:
        code, body = error_json(box["error"])
        yield _line(body)
        return
    res = box["result"]
    final = service.pipeline.encode_response(res.text)
    details = res.details(req.adapters[0])
    details["time_to_first_chunk"] = round(first or res.seconds, 4)
    yield _line({"generated_text": final, "details": details})


def _line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
