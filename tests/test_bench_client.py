"""How the bench client reads replies in each schema: streamed lines cut anywhere, server-sent events with and
without ``[DONE]``, errors in a stream, and where output token counts come from. Pure parsing, fed bytes as a
server would send them (the servers themselves are in test_bench_openai.py and test_bench_sagemaker.py)."""

from __future__ import annotations

import json

from loraship.evaluation.bench.client import INCOMPLETE, RequestRecord, _Stream, make_api, merge


def feed(api, data: bytes, cut: int = 5) -> RequestRecord:
    rec = RequestRecord(0, "measure", "x", "__base__", True)
    stream = _Stream(api, rec, start=0.0)
    for i in range(0, len(data), cut):
        stream.feed(data[i : i + cut], now=1.0 + i)
    stream.close(now=1000.0)
    rec.ok = rec.status == 200
    return rec


def sse(*objs, done=True) -> bytes:
    text = "".join(f"data: {json.dumps(o)}\n\n" for o in objs) + ("data: [DONE]\n\n" if done else "")
    return text.encode()


def chunk(text=None, finish=None):
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_openai_chat_stream_with_usage_and_done():
    api = make_api("openai-chat")
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    rec = feed(
        api, sse({"choices": [{"delta": {"role": "assistant"}}]}, chunk("a"), chunk("b"), chunk("c", "length"), usage)
    )
    assert rec.status == 200 and rec.chunks == 3 and len(rec.itl) == 2
    assert (rec.output_tokens, rec.input_tokens, rec.tokens_from, rec.finish_reason) == (3, 7, "server", "length")
    assert rec.ttft < rec.e2e < 1000.0  # the end is [DONE]'s arrival, not the connection's close


def test_a_finish_without_done_completes_and_nothing_is_incomplete():
    api = make_api("openai-chat", count=lambda text: len(text))  # a "tokenizer" counting characters
    assert feed(api, sse(chunk("ab"), chunk("c", "stop"), done=False)).status == 200
    rec = feed(api, sse(chunk("ab"), chunk("cd"), done=False))
    assert rec.status == INCOMPLETE and not rec.ok
    counted = feed(api, sse(chunk("ab"), chunk("cde", "stop")))
    assert (counted.output_tokens, counted.tokens_from) == (5, "tokenizer")  # no usage: the tokenizer counts
    chunks = feed(make_api("openai-chat"), sse(chunk("ab"), chunk("cde", "stop")))
    assert (chunks.output_tokens, chunks.tokens_from) == (2, "chunks")  # no usage, no tokenizer: one per chunk


def test_an_error_in_a_stream_ends_it_with_its_code():
    error = {"error": {"message": "generation stopped after 108 s", "type": "TimeoutError", "code": 504}}
    rec = feed(make_api("openai-chat"), sse(chunk("a"), error))
    assert (rec.status, rec.error, rec.chunks) == (504, "generation stopped after 108 s", 1)


def test_completions_and_lmi_server_sent_events():
    rec = feed(
        make_api("openai-completions"),
        sse({"choices": [{"text": "x"}]}, {"choices": [{"text": "y", "finish_reason": "length"}]}),
    )
    assert rec.status == 200 and rec.chunks == 2
    lmi = make_api("lmi")
    final = {"token": {"text": "c"}, "generated_text": "abc", "details": {"generated_tokens": 3, "prompt_tokens": 5}}
    lines = [{"token": {"text": "a"}}, {"token": {"text": "b"}}, final]
    for data in (sse(*lines, done=False), "".join(json.dumps(o) + "\n" for o in lines).encode()):
        rec = feed(lmi, data, cut=3)  # LMI's SSE formatter and its JSON lines read alike
        assert (rec.status, rec.chunks, rec.output_tokens, rec.input_tokens) == (200, 3, 3, 5)


def test_bodies_per_schema_and_extra_fields():
    assert make_api("lmi").body("p", "faq", 8, False) == {
        "inputs": "p",
        "adapters": "faq",
        "stream": False,
        "parameters": {"max_new_tokens": 8, "min_new_tokens": 8, "details": True},
    }
    chat = make_api("openai-chat", model="base", extra={"temperature": 0.7}, min_tokens=True)
    assert chat.body("p", "__base__", 8, True) == {
        "model": "base",
        "messages": [{"role": "user", "content": "p"}],
        "max_tokens": 8,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 8,
    }
    assert make_api("openai-completions", model="base").body("p", "faq", 4, False)["model"] == "faq"
    assert merge({"parameters": {"a": 1, "b": 2}}, {"parameters": {"b": 3}}) == {"parameters": {"a": 1, "b": 3}}
