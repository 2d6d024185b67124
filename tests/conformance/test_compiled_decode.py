"""option.decode=compiled through each server: the one-row steps (the base's, and the adapter slot's) compile in
the worker at start-up; a request alone, on the base or on an adapter, then gets the eager path's tokens and
log-probabilities, streamed or not, and a request that shares the batch for a while still gets its own."""

import concurrent.futures as cf
import json

import pytest
import requests
from harness import init_input, read_output, request_input
from servers import KINDS, start_server
from tiny_models import save_random_adapter

from loraship.build import build_model_dir

QUESTIONS = ["What is Amazon SageMaker?", "How do I train a model?"]
COMPILED = "compiled the one-row decode step"
COMPILED_LORA = "compiled the adapter decode step"


@pytest.fixture(scope="module")
def adapter(tiny_neox, tmp_path_factory):
    return save_random_adapter(tiny_neox, tmp_path_factory.mktemp("decode-adapter") / "faq", seed=7)


@pytest.fixture(scope="module", params=KINDS)
def compiled(request, tiny_neox, adapter, tmp_path_factory):
    md = build_model_dir(
        str(tiny_neox),
        tmp_path_factory.mktemp(f"{request.param}-decode") / "md-compiled",
        {"faq": adapter},
        batching="continuous",
        options={"decode": "compiled", "decode_tokens": "256"},
    )
    srv = start_server(md, tmp_path_factory, kind=request.param)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def eager(tiny_neox, adapter):
    """The reference: the handler in-process with the same adapter, decoding eagerly (peft's layers)."""
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    props = {"model_id": str(tiny_neox), "model_dir": str(adapter.parent), "decode": "eager"}
    props |= {"adapter_checkpoint": str(adapter), "adapter_name": "faq"}
    assert svc.handle(init_input(props)) is None
    return svc


def body(question: str, n: int, stream: bool = False, adapter: str = "") -> dict:
    params = {"max_new_tokens": n, "min_new_tokens": n, "details": True}
    return {"inputs": question, "stream": stream, "parameters": params} | ({"adapters": adapter} if adapter else {})


def tokens_of(reply) -> list[tuple[int, float]]:
    if isinstance(reply, list):  # a stream's lines
        return [(line["token"]["id"], line["token"]["log_prob"]) for line in reply]
    return [(t["id"], t["log_prob"]) for t in reply["details"]["tokens"]]


def ask(srv, b: dict):
    r = requests.post(srv.url + "/invocations", json=b, stream=True, timeout=300)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.iter_lines() if line]
    return lines if b["stream"] else lines[0]


def assert_same(got, ref):
    assert [i for i, _ in got] == [i for i, _ in ref]
    assert [p for _, p in got] == pytest.approx([p for _, p in ref], abs=1e-4)


def test_the_step_compiled_before_the_model_reported_ready(compiled):
    """Continuous batching compiles at start-up (the server is ready only after it)."""
    log = compiled.log_path.read_text(errors="replace")
    assert COMPILED in log and COMPILED_LORA in log
    assert "(products on the row kernel)" in log  # the model dir's worker built handler/kernels/row_linear.cpp
    assert "compiling the one-row decode step failed" not in log
    assert "compiling the adapter decode step failed" not in log


@pytest.mark.parametrize("on", ["", "faq"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_request_alone_gets_the_eager_tokens_and_logprobs(compiled, eager, stream, on):
    for question in QUESTIONS:
        ref = tokens_of(read_output(eager.handle(request_input(body(question, 40, adapter=on))))[1])
        assert_same(tokens_of(ask(compiled, body(question, 40, stream, on))), ref)
    if on:  # the adapter does change the output: its rows did not run on the base
        base = tokens_of(read_output(eager.handle(request_input(body(QUESTIONS[0], 40))))[1])
        assert [i for i, _ in base] != [i for i, _ in ref]


def test_rows_that_share_the_batch_for_a_while_get_their_own_results(compiled, eager):
    """A long row decodes alone (compiled), a short one joins once its first tokens are out (both eager, one
    batch), then the long one is alone again (compiled): both equal their eager results alone."""
    long, short = body(QUESTIONS[0], 160, stream=True), body(QUESTIONS[1], 8)
    got_long = []
    with cf.ThreadPoolExecutor(1) as pool:
        r = requests.post(compiled.url + "/invocations", json=long, stream=True, timeout=300)
        second = None
        for line in r.iter_lines():
            if line:
                got_long.append(json.loads(line))
            if len(got_long) == 5 and second is None:
                second = pool.submit(ask, compiled, short)
        got_short = second.result()
    assert got_long[-1]["details"]["batch_size"] == 2  # they did share a step
    assert got_short["details"]["batch_size"] == 2
    for got, b in ((got_long, long), (got_short, short)):
        ref = tokens_of(read_output(eager.handle(request_input({**b, "stream": False})))[1])
        assert_same(tokens_of(got), ref)
