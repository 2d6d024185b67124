"""LMI's response schema (DJL Serving 0.36.0's documented formatters), in-process, in both batching modes:
tokens with their log-probabilities, the prompt's (``decoder_input_details``), ``top_n_tokens``, LMI's
finish reasons, ``stop_sequences``, ``option.tgi_compat`` and ``option.output_formatter``.

The log-probabilities are checked against a teacher-forced forward pass of the same model, so a wrong
position, a shifted token or a sampling-shaped distribution fails here."""

import asyncio
import json

import pytest
import torch
from harness import init_input, read_output, request_input
from test_async_service import frame

from loraship.handler.pipelines.instruction import format_prompt

QUESTION = "What is Amazon SageMaker?"


def _init(tiny_neox, **options) -> dict:
    return {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "max_new_tokens": "64", **options}


@pytest.fixture(scope="module")
def static(tiny_neox):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    assert svc.handle(init_input(_init(tiny_neox))) is None
    return svc


@pytest.fixture(scope="module")
def continuous(tiny_neox):
    from loraship.handler.async_service import AsyncHandlerService

    svc, loop = AsyncHandlerService(), asyncio.new_event_loop()
    assert loop.run_until_complete(svc.handle(init_input(_init(tiny_neox)))) is None
    yield svc, loop
    svc.scheduler.close()
    loop.close()


def ask_static(svc, body: dict):
    """(status, reply); a stream's reply is its list of decoded lines."""
    out = svc.handle(request_input(body))
    if out.stream_content is not None:
        return 200, [bytes(c).decode() for c in out.stream_content]
    return read_output(out)


def ask_continuous(served, body: dict):
    svc, loop = served

    async def run():
        out = await svc.handle(request_input(body))
        if hasattr(out, "__aiter__"):
            return 200, [frame(chunk)["data"] async for chunk in out]
        f = frame(out)
        return int(f.get("code") or 200), json.loads(f["data"])

    return loop.run_until_complete(run())


@pytest.fixture(params=["static", "continuous"])
def ask(request, static, continuous):
    if request.param == "static":
        return lambda body: ask_static(static, body), static
    return lambda body: ask_continuous(continuous, body), continuous[0].core


def teacher_forced(svc, prompt_ids: list[int], generated: list[int]) -> list[float]:
    """Each token's log-probability given everything before it, from one forward pass of the model."""
    ids = torch.tensor([prompt_ids + generated])
    with torch.inference_mode():
        logits = svc.generator.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    return logp.tolist()


def test_details_carry_each_token_with_its_log_probability(ask):
    send, svc = ask
    code, reply = send(
        {"inputs": QUESTION, "parameters": {"max_new_tokens": 10, "min_new_tokens": 10, "details": True}}
    )
    assert code == 200
    d = reply["details"]
    assert list(d)[:4] == ["finish_reason", "generated_tokens", "inputs", "tokens"]  # LMI's keys first
    assert d["finish_reason"] == "length" and d["generated_tokens"] == 10 == len(d["tokens"])
    assert d["inputs"] == QUESTION
    assert all(set(t) == {"id", "text", "log_prob"} for t in d["tokens"])
    assert "".join(t["text"] for t in d["tokens"]).strip() == reply["generated_text"]
    prompt_ids = svc.generator.tokenizer(format_prompt(QUESTION))["input_ids"]
    ids = [t["id"] for t in d["tokens"]]
    expected = teacher_forced(svc, prompt_ids, ids)[len(prompt_ids) - 1 :]
    assert [t["log_prob"] for t in d["tokens"]] == pytest.approx(expected, abs=1e-4)


def test_prefill_and_top_tokens(ask):
    send, svc = ask
    params = {"max_new_tokens": 4, "details": True, "decoder_input_details": True, "top_n_tokens": 3}
    code, reply = send({"inputs": QUESTION, "parameters": params})
    assert code == 200
    d = reply["details"]
    prompt_ids = svc.generator.tokenizer(format_prompt(QUESTION))["input_ids"]
    assert [t["id"] for t in d["prefill"]] == prompt_ids
    assert d["prefill"][0]["log_prob"] is None
    forced = teacher_forced(svc, prompt_ids, [])
    assert [t["log_prob"] for t in d["prefill"][1:]] == pytest.approx(forced, abs=1e-4)
    assert len(d["top_tokens"]) == len(d["tokens"])
    for chosen, top in zip(d["tokens"], d["top_tokens"]):
        values = [t["log_prob"] for t in top]
        assert len(top) == 3 and values == sorted(values, reverse=True)
        assert top[0]["id"] == chosen["id"] and top[0]["log_prob"] == pytest.approx(chosen["log_prob"], abs=1e-5)


def test_static_and_continuous_report_the_same_tokens(static, continuous):
    body = {"inputs": QUESTION, "parameters": {"max_new_tokens": 12, "details": True, "top_n_tokens": 2}}
    _, a = ask_static(static, body)
    _, b = ask_continuous(continuous, body)
    assert a["generated_text"] == b["generated_text"]
    assert [t["id"] for t in a["details"]["tokens"]] == [t["id"] for t in b["details"]["tokens"]]
    for x, y in zip(a["details"]["tokens"], b["details"]["tokens"]):
        assert x["text"] == y["text"] and x["log_prob"] == pytest.approx(y["log_prob"], abs=1e-4)


def test_stop_sequences_and_its_alias(ask):
    send, _ = ask
    _, free = send({"inputs": QUESTION, "parameters": {"max_new_tokens": 30, "details": True}})
    text = "".join(t["text"] for t in free["details"]["tokens"])
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the model is known to produce here
    assert stop.strip()
    for key in ("stop_sequences", "stop"):
        code, reply = send({"inputs": QUESTION, "parameters": {"max_new_tokens": 30, "details": True, key: [stop]}})
        assert code == 200 and reply["details"]["finish_reason"] == "stop_sequence"
        assert stop not in "".join(t["text"] for t in reply["details"]["tokens"])
    code, reply = send({"inputs": QUESTION, "parameters": {"stop": ["a"], "stop_sequences": ["b"]}})
    assert code == 400 and "stop_sequences" in reply["error"]


def test_unknown_and_out_of_range_parameters_are_refused(ask):
    send, _ = ask
    code, reply = send({"inputs": QUESTION, "parameters": {"top_n_tokens": 21}})
    assert code == 400 and "top_n_tokens" in reply["error"]
    code, reply = send({"inputs": QUESTION, "parameters": {"decoder_input_detail": True}})
    assert code == 400 and "decoder_input_detail" in reply["error"]


def test_a_stream_has_a_token_per_line_and_the_answer_on_the_last(ask):
    send, _ = ask
    params = {"max_new_tokens": 8, "min_new_tokens": 8, "details": True}
    code, lines = send({"inputs": QUESTION, "stream": True, "parameters": params})
    assert code == 200
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 8 and all(set(r["token"]) == {"id", "text", "log_prob"} for r in rows)
    assert set(rows[-1]) == {"token", "generated_text", "details"} and "tokens" not in rows[-1]["details"]
    _, whole = send({"inputs": QUESTION, "parameters": params})
    streamed, whole = [r["token"] for r in rows], whole["details"]["tokens"]
    assert [(t["id"], t["text"]) for t in streamed] == [(t["id"], t["text"]) for t in whole]
    assert [t["log_prob"] for t in streamed] == pytest.approx([t["log_prob"] for t in whole], abs=1e-5)


@pytest.fixture(scope="module")
def tgi(tiny_neox):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    svc.handle(init_input(_init(tiny_neox, tgi_compat="true")))
    return svc


def test_tgi_compat_wraps_replies_and_uses_tgi_keys(tgi):
    code, reply = ask_static(tgi, {"inputs": QUESTION, "parameters": {"max_new_tokens": 3}})
    assert code == 200 and isinstance(reply, list) and len(reply) == 1
    assert reply[0]["details"]["tokens"] and all("logprob" in t for t in reply[0]["details"]["tokens"])
    _, plain = ask_static(tgi, {"inputs": QUESTION, "parameters": {"max_new_tokens": 3, "details": False}})
    assert plain == [{"generated_text": reply[0]["generated_text"]}]
    _, events = ask_static(tgi, {"inputs": QUESTION, "stream": True, "parameters": {"max_new_tokens": 3}})
    assert all(e.startswith("data: {") and e.endswith("\n\n") for e in events)  # TGI streams SSE
    assert "logprob" in json.loads(events[0][len("data: ") :])["token"]


def test_output_formatter_jsonlines_streams_every_reply(tiny_neox):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    svc.handle(init_input(_init(tiny_neox, output_formatter="jsonlines")))
    out = svc.handle(request_input({"inputs": QUESTION, "parameters": {"max_new_tokens": 3}}))
    assert out.properties["content-type"] == "application/jsonlines"
    assert [json.loads(bytes(c)) for c in out.stream_content][-1]["generated_text"]


def test_an_error_message_is_one_line():
    """Real DJL Serving sends the message as the HTTP reason phrase and answers 500 for a line break."""
    from loraship.handler.errors import BadRequest, error_json

    code, body = error_json(BadRequest("first line\nsecond line\r\nthird"))
    assert code == 400 and body["error"] == "first line second line third"
    assert error_json(ValueError("a\nb"))[1]["error"] == "ValueError: a b"
