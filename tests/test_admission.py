"""Admission limits in-process: inputs per request, tokens per request, tokens per generate call, and the
time budget under option.predict_timeout (the same cases through both servers: conformance/test_limits.py)."""

import time

import pytest
from harness import batch_input, init_input, read_output, request_input

LIMITS = {"max_inputs_per_request": "3", "max_request_tokens": "300", "max_batch_total_tokens": "400"}


def make_service(tiny_neox, **options):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    assert (
        svc.handle(
            init_input(
                {
                    "model_id": str(tiny_neox),
                    "model_dir": str(tiny_neox),
                    "device_id": "-1",
                    "max_new_tokens": "256",
                    **options,
                }
            )
        )
        is None
    )
    return svc


@pytest.fixture(scope="module")
def service(tiny_neox):
    return make_service(tiny_neox, **LIMITS)


def ask(svc, body):
    return read_output(svc.handle(request_input(body)))


def prompt_tokens(svc, text: str) -> int:
    from loraship.handler.requests import GenerationParams

    return len(svc.generator.check_length(svc.pipeline.decode_request(text), GenerationParams(max_new_tokens=1)))


def test_inputs_per_request(service):
    code, body = ask(service, {"inputs": ["a?", "b?", "c?"], "parameters": {"max_new_tokens": 2}})
    assert code == 200 and len(body) == 3
    start = time.perf_counter()
    code, body = ask(service, {"inputs": ["a?"] * 1000, "parameters": {"max_new_tokens": 1}})
    assert time.perf_counter() - start < 1.0  # refused before any model work
    assert code == 413 and body["type"] == "PayloadTooLarge" and body["field"] == "inputs"
    assert "has 1000 inputs; option.max_inputs_per_request is 3" in body["error"]


def test_tokens_per_request_just_under_and_just_over(service):
    n = prompt_tokens(service, "Where is it?")
    new = 150 - n  # two inputs: 2 x (n + new) == 300, the limit
    assert 0 < new <= 256
    code, body = ask(service, {"inputs": ["Where is it?"] * 2, "parameters": {"max_new_tokens": new}})
    assert code == 200, body
    code, body = ask(service, {"inputs": ["Where is it?"] * 2, "parameters": {"max_new_tokens": new + 1}})
    assert code == 413 and body["field"] == "inputs"
    assert f"costs 302 tokens ({2 * n} prompt tokens + 2 x max_new_tokens {new + 1})" in body["error"]
    assert "option.max_request_tokens is 300" in body["error"]


def test_a_batch_over_the_step_budget_runs_in_parts_with_unchanged_results(service, monkeypatch):
    bodies = [
        {"inputs": p, "parameters": {"max_new_tokens": 30}}
        for p in ("One?", "Two things?", "A third one?", "And the fourth question?")
    ]
    alone = [ask(service, b)[1]["generated_text"] for b in bodies]
    calls = []
    real = service.generator.generate

    def recording(prompts, params, *args, **kwargs):
        calls.append(len(prompts))
        return real(prompts, params, *args, **kwargs)

    monkeypatch.setattr(service.generator, "generate", recording)
    out = read_output(service.handle(batch_input([request_input(b) for b in bodies])), 4)
    assert [o["generated_text"] for o in out] == alone
    assert len(calls) > 1 and sum(calls) == 4  # 4 x (prompt + 30) is over 400: never one call


def test_options_that_cannot_work_fail_the_load(tiny_neox):
    from loraship.handler.errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_request_tokens \(500\) must not exceed option.max_batch_total"):
        make_service(tiny_neox, max_request_tokens="500", max_batch_total_tokens="400")


def slow_forward(svc, monkeypatch, seconds=0.05):
    """Every decode step of the served model takes ``seconds`` longer (a stand-in for a big model)."""
    svc.options.decode = "eager"  # a compiled one-row step would not go through model.forward
    model = svc.generator.model
    real = model.forward

    def forward(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)


def test_generation_over_the_time_budget_ends_alone_with_504(tiny_neox, monkeypatch):
    svc = make_service(tiny_neox, predict_timeout="3")  # 1 s for generation
    assert svc.options.time_budget == 1.0
    slow_forward(svc, monkeypatch)
    start = time.perf_counter()
    code, body = ask(svc, {"inputs": "long?", "parameters": {"max_new_tokens": 60, "min_new_tokens": 60}})
    assert time.perf_counter() - start < 2.5  # answered before DJL's predict_timeout would kill the worker
    assert code == 504 and body["type"] == "GenerationTimeout", body
    assert "option.predict_timeout (3 s)" in body["error"]
    code, body = ask(svc, {"inputs": "short?", "parameters": {"max_new_tokens": 3}})  # the worker goes on
    assert code == 200
    # In a batch, the request that runs out of time fails alone: its neighbour was answered.
    long = {"inputs": "long?", "parameters": {"max_new_tokens": 60, "min_new_tokens": 60}}
    short = {"inputs": "short?", "parameters": {"max_new_tokens": 3}}
    out = read_output(svc.handle(batch_input([request_input(short), request_input(long)])), 2)
    assert "generated_text" in out[0] and out[1]["code"] == 504, out


def test_a_stream_over_the_time_budget_ends_with_its_error(tiny_neox, monkeypatch):
    import json

    svc = make_service(tiny_neox, predict_timeout="3")
    slow_forward(svc, monkeypatch)
    out = svc.handle(
        request_input({"inputs": "long?", "stream": True, "parameters": {"max_new_tokens": 60, "min_new_tokens": 60}})
    )
    lines = [json.loads(chunk) for chunk in out.stream_content]
    assert lines[-1]["code"] == 504 and lines[-1]["type"] == "GenerationTimeout", lines[-1]
    assert any("token" in line for line in lines[:-1])  # what came in time was streamed
