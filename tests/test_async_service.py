"""The handler in DJL's async mode, in-process: DJL's async engine awaits ``handle`` once per request, and
every request is its own reply (or stream) with its own status, while the others keep generating."""

import asyncio
import json

import pytest
from djl_python.test_model import decode_encoded_output_binary
from harness import init_input, request_input
from tiny_models import save_random_adapter

from loraship.handler.pipelines.instruction import format_prompt
from loraship.handler.requests import GenerationParams

QUESTIONS = ["What is Amazon SageMaker?", "How do I train a model?", "Which regions are supported?"]


def frame(out) -> dict:
    """The binary dict DJL's AsyncRequestManager reads from an async Output's first content item."""
    return decode_encoded_output_binary(bytearray(out.content.value_at(0)))


def body(out) -> tuple[int, object]:
    f = frame(out)
    assert f["last"] == "True"
    return int(f.get("code") or 200), json.loads(f["data"])


@pytest.fixture(scope="module")
def served(tiny_neox, tmp_path_factory):
    """An initialised async service with adapters alpha and beta, and its own event loop."""
    from loraship.handler.async_service import AsyncHandlerService

    root = tmp_path_factory.mktemp("async-adapters")
    for name, seed in (("alpha", 1), ("beta", 2)):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    svc = AsyncHandlerService()
    loop = asyncio.new_event_loop()
    init = {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "adapter_roots": str(root)}
    assert loop.run_until_complete(svc.handle(init_input(init))) is None  # DJL's init call: 204
    for name in ("alpha", "beta"):
        reply = loop.run_until_complete(
            svc.adapter_call(init_input({"name": name, "src": str(root / name)}), "register")
        )
        assert body(reply)[0] == 200
    yield svc, loop, root
    svc.scheduler.close()
    loop.close()


def alone(svc, question, adapter, n):
    model = svc.core.adapters.ensure_loaded([adapter])
    params = GenerationParams(max_new_tokens=n)
    return svc.core.generator.generate([format_prompt(question)], params, [adapter], model=model)[0].text


async def collect(svc, request):
    """What a client gets: (status, body) for a reply, (200, [lines]) for a stream."""
    out = await svc.handle(request_input(request))
    if hasattr(out, "__aiter__"):
        lines = []
        async for chunk in out:
            lines.append(json.loads(frame(chunk)["data"]))
        return 200, lines
    return body(out)


def test_concurrent_streams_mixing_adapters_each_equal_their_result_alone(served):
    svc, loop, _ = served
    plan = [(QUESTIONS[i % 3], ["", "alpha", "beta"][i % 3], 4 + 5 * i) for i in range(9)]
    requests = [
        {
            "inputs": q,
            "adapters": a or "__base__",
            "stream": i % 2 == 0,
            "parameters": {"max_new_tokens": n, "details": True},
        }
        for i, (q, a, n) in enumerate(plan)
    ]

    async def run():
        return await asyncio.gather(*(collect(svc, r) for r in requests))

    replies = loop.run_until_complete(run())
    for i, ((q, a, n), (code, got)) in enumerate(zip(plan, replies)):
        assert code == 200
        if i % 2 == 0:
            *pieces, final = got
            text = "".join(p["token"]["text"] for p in got)  # the last line has a token too
            assert text.strip() == final["generated_text"]
        else:
            final = got
        assert final["generated_text"] == svc.core.pipeline.encode_response(alone(svc, q, a, n)), (i, a, n)
    assert max(r[1][-1]["details"]["batch_size"] if isinstance(r[1], list) else 1 for r in replies) > 1


def test_a_bad_request_and_an_unknown_adapter_get_their_status_while_others_generate(served):
    svc, loop, _ = served
    # long enough to outlast the two answers by far, even with the compiled one-row step (~1 ms a token here)
    long = {"inputs": QUESTIONS[0], "parameters": {"max_new_tokens": 400, "min_new_tokens": 400}}

    async def run():
        running = asyncio.ensure_future(collect(svc, long))
        await asyncio.sleep(0.05)
        bad = await collect(svc, {"inputs": "x", "parameters": {"max_new_tokens": -1}})
        unknown = await collect(svc, {"inputs": "x", "adapters": "nope"})
        assert not running.done()  # answered while the long request was still generating
        return bad, unknown, await running

    (bad_code, bad), (unknown_code, unknown), (ok_code, ok) = loop.run_until_complete(run())
    assert (bad_code, unknown_code, ok_code) == (400, 404, 200)
    assert "max_new_tokens" in bad["error"] and "nope" in unknown["error"]
    assert len(ok["generated_text"]) > 0


def test_unregistering_an_adapter_lets_its_running_request_finish_and_refuses_new_ones(served):
    svc, loop, root = served
    asking = {"inputs": QUESTIONS[1], "adapters": "beta", "parameters": {"max_new_tokens": 40, "min_new_tokens": 40}}

    async def run():
        running = asyncio.ensure_future(collect(svc, asking))
        await asyncio.sleep(0.05)
        removal = asyncio.ensure_future(svc.adapter_call(init_input({"name": "beta"}), "unregister"))
        await asyncio.sleep(0.05)
        refused = await collect(svc, {"inputs": "x", "adapters": "beta"})
        return await running, refused, await removal

    (code, reply), (refused_code, _), removed = loop.run_until_complete(run())
    assert code == 200 and reply["generated_text"]
    assert refused_code == 404
    assert body(removed)[0] == 200 and "beta" not in svc.core.adapters.sources
    again = init_input({"name": "beta", "src": str(root / "beta")})
    assert body(loop.run_until_complete(svc.adapter_call(again, "register")))[0] == 200


def test_cancelling_a_request_frees_its_row_at_the_next_step(served):
    """What loraship's host does when a streamed request's client goes away: ``cancel_request`` names the
    request by DJL's ``request_tracking_id``; its row leaves the batch and its stream ends with a 499 line."""
    svc, loop, _ = served
    long = {"inputs": QUESTIONS[2], "stream": True, "parameters": {"max_new_tokens": 400, "min_new_tokens": 400}}

    async def run():
        out = await svc.handle(request_input(long, headers={"request_tracking_id": "t-1"}))
        lines = [json.loads(frame(await anext(out))["data"])]  # generating now
        assert len(svc.scheduler.running) == 1
        cancelled = body(await svc.cancel(init_input({"target": "t-1"})))
        unknown = body(await svc.cancel(init_input({"target": "no-such-request"})))
        async for chunk in out:
            lines.append(json.loads(frame(chunk)["data"]))
        return cancelled, unknown, lines

    cancelled, unknown, lines = loop.run_until_complete(run())
    assert cancelled == (200, {"cancelled": 1}) and unknown == (200, {"cancelled": 0})
    assert lines[-1]["code"] == 499 and "cancelled after" in lines[-1]["error"]
    assert len(lines) < 400  # it left long before its 400 tokens
    assert svc.scheduler.running == [] and svc.live == {}
