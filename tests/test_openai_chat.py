"""OpenAI chat completions in-process: parsing edge cases (handler/openai_chat.py), and the chat replies of
both batching modes against the LMI schema's answers for the same prompt. The same through both servers
with the real clients: conformance/test_openai.py."""

import asyncio
import json

import pytest
from harness import batch_input, init_input, read_output, request_input
from hypothesis import HealthCheck, given, settings
from rel_support import chat_bodies
from tiny_models import save_random_adapter

from loraship.handler.errors import BadRequest, NotFound
from loraship.handler.openai_chat import ModelNames, error_json, parse_chat
from loraship.handler.pipelines.instruction import format_prompt

Q = "What is Amazon SageMaker?"
USER = [{"role": "user", "content": Q}]
NAMES = ModelNames.of("/models/SmolLM2-135M-Instruct", "/srv/md-conf", "")


def parse(body, **kw):
    args = dict(names=NAMES, adapters={"alpha", "beta"}, max_cap=100, default_max=16, max_n=4)
    return parse_chat({"messages": USER, **body}, **{**args, **kw})


# ---- parsing ------------------------------------------------------------------------------------


def test_defaults_follow_openai():
    req = parse({})
    p = req.params
    assert p.do_sample and p.temperature == 1.0  # OpenAI's default temperature samples
    assert p.max_new_tokens == 16 and p.top_n_tokens == 0 and not p.decoder_input_details
    assert req.adapters == [""] and req.chat.model == "SmolLM2-135M-Instruct" and req.chat.n == 1
    assert req.chat.add_generation_prompt and not req.chat.continue_final_message and not req.stream
    assert not req.wants_tokens


def test_generation_fields():
    req = parse(
        {"temperature": 0, "top_p": 0.5, "seed": 7, "stop": "\n", "max_completion_tokens": 9, "top_k": -1,
         "min_tokens": 2, "repetition_penalty": 1.2, "logprobs": True, "top_logprobs": 3}
    )  # fmt: skip
    p = req.params
    assert not p.do_sample and p.top_p == 0.5 and p.seed == 7 and p.stop == ("\n",) and p.max_new_tokens == 9
    assert p.top_k == 0 and p.min_new_tokens == 2 and p.repetition_penalty == 1.2 and p.top_n_tokens == 3
    assert req.wants_tokens  # logprobs need the tokens
    assert parse({"max_tokens": 5, "max_completion_tokens": 5}).params.max_new_tokens == 5
    assert parse({"stop": ["a", "b"]}).params.stop == ("a", "b")


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"temperature": 2.5}, "temperature", "<= 2"),
        ({"temperature": "hot"}, "temperature", "a number"),
        ({"top_p": 0}, "top_p", "> 0.0"),
        ({"max_tokens": 0}, "max_tokens", ">= 1"),
        ({"max_tokens": 101}, "max_tokens", "<= 100"),
        ({"max_tokens": 1.5}, "max_tokens", "an integer"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "give one"),
        ({"n": 5}, "n", "max_inputs_per_request"),
        ({"n": 0}, "n", ">= 1"),
        ({"seed": -1}, "seed", ">= 0"),
        ({"stop": 3}, "stop", "string or a list"),
        ({"stop": [""]}, "stop", "1..256"),
        ({"logprobs": "yes"}, "logprobs", "true or false"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "<= 20"),
        ({"prompt_logprobs": -1}, "prompt_logprobs", ">= 0"),
        ({"stream": True, "n": 2}, "n", "n=1"),
        ({"stream": True, "prompt_logprobs": 0}, "prompt_logprobs", "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
        ({"stream": True, "stream_options": {"nope": 1}}, "stream_options.nope", "unknown"),
        ({"model": 3}, "model", "string"),
        ({"parameters": {"max_new_tokens": 3}}, "parameters", "OpenAI's fields"),
        ({"inputs": "x"}, "inputs", "unknown fields"),
        ({"frobnicate": 1}, "frobnicate", "unknown fields"),
        ({"logit_bias": {"50": 5}}, "logit_bias", "not supported"),
        ({"tools": [{"type": "function"}]}, "tools", "not supported"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
        ({"messages": []}, "messages", "non-empty list"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "string or a list"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", "text"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls", "tools"),
        ({"continue_final_message": True}, "continue_final_message", "assistant message last"),
        (
            {"messages": [*USER, {"role": "assistant", "content": "A"}], "continue_final_message": True,
             "add_generation_prompt": True},
            "add_generation_prompt",
            "both be true",
        ),
    ],
)  # fmt: skip
def test_bad_fields_are_400_naming_them(body, field, words):
    with pytest.raises(BadRequest) as err:
        parse(body)
    assert err.value.field == field and words in err.value.message, err.value.message
    status, reply = error_json(err.value, chat=True)
    assert status == 400 and reply == {
        "error": {"message": err.value.message, "type": "BadRequestError", "param": field, "code": 400}
    }


def test_harmless_openai_fields_are_ignored():
    ignored = {
        "user": "u-1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "parallel_tool_calls": True,
        "logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0.0, "tools": [], "tool_choice": "none",
        "response_format": {"type": "text"}, "modalities": ["text"], "audio": None, "reasoning_effort": None,
    }  # fmt: skip
    assert parse({**ignored, "temperature": 0}).params == parse({"temperature": 0}).params


def test_messages_are_normalised():
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    req = parse(
        {"messages": [{"role": "developer", "content": "sys", "name": "x"}, {"role": "user", "content": parts}]}
    )
    assert req.chat.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "one\ntwo"}]


def test_the_model_names_the_adapter():
    assert parse({"model": "alpha"}).adapters == ["alpha"]
    for base in ("__base__", "SmolLM2-135M-Instruct", "/models/SmolLM2-135M-Instruct", "md_conf"):
        req = parse({"model": base})
        assert req.adapters == [""] and req.chat.model == base  # the reply echoes the name asked for
    with pytest.raises(NotFound) as err:
        parse({"model": "gpt-4o"})
    assert err.value.field == "model" and "'gpt-4o'" in err.value.message
    assert "(SmolLM2-135M-Instruct, md_conf, alpha, beta; or '__base__')" in err.value.message  # no paths
    assert error_json(err.value, chat=True) == (
        404,
        {"error": {"message": err.value.message, "type": "NotFoundError", "param": "model", "code": 404}},
    )
    # Without a model: ?adapter=, then SageMaker's header, as for LMI's schema
    assert (
        parse({}, header_adapter="beta").adapters == ["beta"] and parse({}, header_adapter="beta").chat.model == "beta"
    )
    assert parse({}, query_adapter="alpha", header_adapter="beta").adapters == ["alpha"]
    assert parse({"model": "__base__"}, header_adapter="beta").adapters == [""]  # the model decides
    assert parse({}, header_adapter="__base__").adapters == [""]


def test_model_names_of_a_model_dir():
    names = ModelNames.of("org/my-model", "/x/md-ad", "served")
    assert names.base == {"__base__", "org/my-model", "my-model", "md_ad", "served"} and names.display == "served"
    assert ModelNames.of("/m/base/", "/x/md", "").display == "base"


def test_n_rows_sample_with_seed_plus_i_and_greedy_rows_share_params():
    req = parse({"n": 3, "seed": 10})
    assert [req.params_of(i).seed for i in range(3)] == [10, 11, 12] and len(req.items) == 3
    greedy = parse({"n": 3, "temperature": 0})
    assert greedy.item_params is None and greedy.params_of(2) == greedy.params


def test_continue_final_message_defaults_add_generation_prompt_off():
    req = parse({"messages": [*USER, {"role": "assistant", "content": "A"}], "continue_final_message": True,
                 "prompt_logprobs": 2, "max_tokens": 1})  # fmt: skip
    assert req.chat.continue_final_message and not req.chat.add_generation_prompt
    assert req.params.decoder_input_details and req.params.prompt_top_n == 2 and req.params.max_new_tokens == 1


def test_an_error_message_is_one_line():
    status, body = error_json(BadRequest("a\nb\r\nc", field="x"), chat=True)
    assert body["error"]["message"] == "a b c"
    status, body = error_json(RuntimeError("boom"), chat=True)
    assert status == 500 and body["error"]["type"] == "InternalServerError" and "boom" in body["error"]["message"]


# ---- the handler, static batching ------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters_root(tiny_neox, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-adapters")
    save_random_adapter(tiny_neox, root / "alpha", seed=1)
    return root


@pytest.fixture(scope="module")
def static(tiny_neox, adapters_root):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    props = {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "device_id": "-1", "max_new_tokens": "64",
             "adapter_roots": str(adapters_root)}  # fmt: skip
    assert svc.handle(init_input(props)) is None
    svc.register("alpha", str(adapters_root / "alpha"))
    return svc


def ask(svc, body, **kw):
    return read_output(svc.handle(request_input(body, **kw)))


def events(chunks) -> list:
    """The SSE events of a stream: JSON objects, and the final "[DONE]"."""
    out = []
    for chunk in chunks:
        text = bytes(chunk).decode() if not isinstance(chunk, str) else chunk
        for event in text.split("\n\n"):
            if event:
                assert event.startswith("data: "), event
                data = event[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def lmi_answer(svc, question, adapter, n, **params):
    body = {"inputs": question, "adapters": adapter, "parameters": {"max_new_tokens": n, "details": True, **params}}
    code, reply = ask(svc, body)
    assert code == 200
    return reply


@pytest.mark.parametrize("adapter", ["__base__", "alpha"])
def test_a_greedy_chat_completion_is_the_lmi_answer(static, adapter):
    lmi = lmi_answer(static, Q, adapter, 10)
    code, reply = ask(static, {"messages": USER, "model": adapter, "max_tokens": 10, "temperature": 0})
    assert code == 200
    assert set(reply) == {"id", "object", "created", "model", "choices", "usage"}
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-") and reply["model"] == adapter
    [choice] = reply["choices"]
    assert choice["message"] == {"role": "assistant", "content": lmi["generated_text"]}
    openai_reason = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
    assert choice["finish_reason"] == openai_reason[lmi["details"]["finish_reason"]] and choice["logprobs"] is None
    usage = reply["usage"]
    assert usage["prompt_tokens"] == lmi["details"]["prompt_tokens"]
    assert usage["completion_tokens"] == lmi["details"]["generated_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_adapter_header_works_without_a_model(static):
    lmi = lmi_answer(static, Q, "alpha", 8)
    base = lmi_answer(static, Q, "__base__", 8)
    assert lmi["generated_text"] != base["generated_text"]  # the adapter changes the answer
    code, reply = ask(
        static,
        {"messages": USER, "max_tokens": 8, "temperature": 0},
        headers={"X-Amzn-SageMaker-Adapter-Identifier": "alpha"},
    )
    assert code == 200 and reply["choices"][0]["message"]["content"] == lmi["generated_text"]
    assert reply["model"] == "alpha"


def test_logprobs_are_the_lmi_tokens(static):
    lmi = lmi_answer(static, Q, "alpha", 8, top_n_tokens=3)
    body = {"messages": USER, "model": "alpha", "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    code, reply = ask(static, body)
    content = reply["choices"][0]["logprobs"]["content"]
    assert len(content) == len(lmi["details"]["tokens"]) == reply["usage"]["completion_tokens"]
    for entry, tok, top in zip(content, lmi["details"]["tokens"], lmi["details"]["top_tokens"]):
        assert entry["token"] == tok["text"] and entry["logprob"] == pytest.approx(tok["log_prob"], abs=1e-5)
        assert entry["bytes"] == (list(tok["text"].encode()) if tok["text"] else None)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx([t["log_prob"] for t in top], abs=1e-5)
        # greedy: the chosen token is the most likely one, so it is the first of top_logprobs
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"], abs=1e-6)
        assert entry["logprob"] <= 0


def test_n_choices(static):
    code, reply = ask(static, {"messages": USER, "max_tokens": 6, "temperature": 0, "n": 3})
    assert code == 200 and [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in reply["choices"]}) == 1  # greedy rows are identical
    _, one = ask(static, {"messages": USER, "max_tokens": 6, "temperature": 0})
    assert reply["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    assert reply["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]  # the prompt counts once
    sampled = {"messages": USER, "max_tokens": 12, "temperature": 1.5, "n": 3, "seed": 5}
    code, first = ask(static, sampled)
    code, again = ask(static, sampled)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]  # seeded: reproducible
    assert len(set(texts)) > 1  # seeds seed+i: the rows differ
    assert first["usage"]["completion_tokens"] == sum(
        ask(static, {**sampled, "n": 1, "seed": 5 + i})[1]["usage"]["completion_tokens"] for i in range(3)
    )


def test_stop_ends_with_openai_finish_reason(static):
    code, free = ask(static, {"messages": USER, "max_tokens": 12, "temperature": 0})
    text = free["choices"][0]["message"]["content"]
    stop = text[3:5]
    code, reply = ask(static, {"messages": USER, "max_tokens": 12, "temperature": 0, "stop": [stop]})
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["choices"][0]["message"]["content"] == text[: text.index(stop)].strip()


def test_prompt_logprobs_of_a_continued_final_message(static):
    """Scoring a reference answer: vLLM's continue_final_message with prompt_logprobs and max_tokens 1."""
    answer = "SageMaker is a service"
    body = {"messages": [*USER, {"role": "assistant", "content": answer}], "continue_final_message": True,
            "add_generation_prompt": False, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 2}  # fmt: skip
    code, reply = ask(static, {**body, "model": "alpha"})
    assert code == 200
    scores = reply["prompt_logprobs"]
    prompt = format_prompt(Q) + answer
    tokenizer = static.generator.tokenizer
    ids = tokenizer(prompt)["input_ids"]
    assert len(scores) == len(ids) == reply["usage"]["prompt_tokens"] and scores[0] is None
    for tok, entry in zip(ids[1:], scores[1:]):
        own = entry[str(tok)]
        assert own["decoded_token"] == tokenizer.decode([tok]) and own["logprob"] <= 0 and own["rank"] >= 1
        alts = [v for k, v in entry.items() if k != str(tok)]
        assert len(entry) in (2, 3) and all(v["rank"] in (1, 2) for v in alts)
        best = max(v["logprob"] for v in entry.values())
        assert (own["rank"] == 1) == (own["logprob"] == best)
    assert "".join(e[str(t)]["decoded_token"] for t, e in zip(ids[1:], scores[1:])).endswith(answer)
    # the same values as LMI's prefill of the same prompt (decoder_input_details), adapter and all
    lmi = lmi_answer(static, Q, "alpha", 1, decoder_input_details=True)
    prefix = lmi["details"]["prefill"]
    assert [t["id"] for t in prefix] == ids[: len(prefix)] and len(prefix) < len(ids)
    for tok, entry in zip(prefix[1:], scores[1:]):
        assert entry[str(tok["id"])]["logprob"] == pytest.approx(tok["log_prob"], abs=1e-4)


def test_a_streamed_chat_completion(static):
    code, whole = ask(static, {"messages": USER, "model": "alpha", "max_tokens": 10, "temperature": 0,
                               "logprobs": True, "top_logprobs": 2})  # fmt: skip
    body = {"messages": USER, "model": "alpha", "max_tokens": 10, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    out = static.handle(request_input(body))
    assert out.properties["content-type"] == "text/event-stream"
    got = events(out.stream_content)
    assert got[-1] == "[DONE]"
    *chunks, usage, _ = got
    assert {c["id"] for c in got[:-1]} == {got[0]["id"]} and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    streamed = [e for c in chunks if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed == whole["choices"][0]["logprobs"]["content"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_chat_errors_are_openai_error_objects(static):
    code, reply = ask(static, {"messages": USER, "model": "nope"})
    assert code == 404 and reply["error"]["type"] == "NotFoundError" and reply["error"]["param"] == "model"
    code, reply = ask(static, {"messages": USER, "temperature": -1})
    assert code == 400 and reply["error"]["param"] == "temperature"
    code, reply = ask(static, {"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 64})
    assert code == 400 and "limit of 512" in reply["error"]["message"]
    # LMI's bodies keep LMI's errors
    code, reply = ask(static, {"inputs": Q, "adapters": "nope"})
    assert code == 404 and isinstance(reply["error"], str)


def test_a_batch_mixes_chat_and_lmi_requests(static):
    chat = request_input({"messages": USER, "max_tokens": 6, "temperature": 0})
    lmi = request_input({"inputs": Q, "parameters": {"max_new_tokens": 6}})
    bad = request_input({"messages": USER, "model": "nope"})
    replies = read_output(static.handle(batch_input([chat, lmi, bad])), 3)
    assert replies[0]["choices"][0]["message"]["content"] == replies[1]["generated_text"]
    assert replies[2]["error"]["code"] == 404


def test_a_stream_cut_by_the_time_budget_ends_with_an_error_event(tiny_neox, monkeypatch):
    from test_admission import make_service, slow_forward

    svc = make_service(tiny_neox, predict_timeout="3")
    slow_forward(svc, monkeypatch)
    body = {"messages": USER, "max_tokens": 60, "min_tokens": 60, "stream": True}
    got = events(svc.handle(request_input(body)).stream_content)
    assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == 504 and got[-2]["error"]["type"] == "TimeoutError"
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"


# ---- the handler, continuous batching (DJL's async mode) -----------------------------------------------


@pytest.fixture(scope="module")
def cont(tiny_neox, adapters_root):
    from loraship.handler.async_service import AsyncHandlerService

    svc = AsyncHandlerService()
    loop = asyncio.new_event_loop()
    props = {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "adapter_roots": str(adapters_root)}
    assert loop.run_until_complete(svc.handle(init_input(props))) is None
    reg = loop.run_until_complete(
        svc.adapter_call(init_input({"name": "alpha", "src": str(adapters_root / "alpha")}), "register")
    )
    assert reg is not None
    yield svc, loop
    svc.scheduler.close()
    loop.close()


def run_async(cont, body):
    """(status, body) of a reply; (200, events) of a stream."""
    from djl_python.test_model import decode_encoded_output_binary

    svc, loop = cont

    async def go():
        out = await svc.handle(request_input(body))
        if hasattr(out, "__aiter__"):
            frames = [decode_encoded_output_binary(bytearray(c.content.value_at(0))) async for c in out]
            return 200, events(f["data"] for f in frames)
        f = decode_encoded_output_binary(bytearray(out.content.value_at(0)))
        return int(f.get("code") or 200), (json.loads(f["data"]) if f.get("data") else f)

    return loop.run_until_complete(go())


def test_continuous_batching_serves_chat_as_static_does(cont, static):
    for adapter in ("__base__", "alpha"):
        body = {"messages": USER, "model": adapter, "max_tokens": 9, "temperature": 0, "logprobs": True,
                "top_logprobs": 2}  # fmt: skip
        code, reply = run_async(cont, body)
        _, expected = ask(static, body)
        assert code == 200
        assert reply["choices"][0]["message"] == expected["choices"][0]["message"]
        assert reply["usage"] == expected["usage"]
        got, want = reply["choices"][0]["logprobs"]["content"], expected["choices"][0]["logprobs"]["content"]
        assert [e["token"] for e in got] == [e["token"] for e in want]
        assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want], abs=1e-4)
        code, streamed = run_async(cont, {**body, "stream": True})
        assert streamed[-1] == "[DONE]"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1])
        assert text == expected["choices"][0]["message"]["content"]
        assert streamed[-2]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]


def test_continuous_batching_prompt_logprobs_and_errors(cont, static):
    body = {"messages": [*USER, {"role": "assistant", "content": "It is"}], "continue_final_message": True,
            "max_tokens": 1, "temperature": 0, "prompt_logprobs": 1}  # fmt: skip
    code, reply = run_async(cont, body)
    _, expected = ask(static, body)
    assert code == 200 and len(reply["prompt_logprobs"]) == len(expected["prompt_logprobs"])
    for got, want in zip(reply["prompt_logprobs"][1:], expected["prompt_logprobs"][1:]):
        assert got.keys() == want.keys()
        for k in got:
            assert got[k]["rank"] == want[k]["rank"] and got[k]["logprob"] == pytest.approx(
                want[k]["logprob"], abs=1e-4
            )
    code, reply = run_async(cont, {"messages": USER, "model": "nope"})
    # DJL's async framing carries the OpenAI error object as data and its message as the error
    assert code == 404 and reply["error"]["type"] == "NotFoundError"


def test_an_end_of_sequence_is_finish_reason_stop(static, monkeypatch):
    """LMI says eos_token; OpenAI's clients expect stop. The tiny model's third greedy token is made its EOS."""
    body = {"messages": USER, "max_tokens": 10, "temperature": 0, "logprobs": True}
    _, free = ask(static, body)
    third = lmi_answer(static, Q, "__base__", 10)["details"]["tokens"][2]["id"]
    monkeypatch.setattr(static.generator, "eos_ids", static.generator.eos_ids | {third})
    _, reply = ask(static, body)
    [choice] = reply["choices"]
    assert choice["finish_reason"] == "stop" and reply["usage"]["completion_tokens"] == 3  # the EOS counts
    assert choice["logprobs"]["content"][-1]["token"] == "" and choice["logprobs"]["content"][-1]["bytes"] is None
    assert choice["message"]["content"] == "".join(e["token"] for e in free["choices"][0]["logprobs"]["content"][:2])


def test_streamed_deltas_add_up_to_the_pipelines_answer():
    """Each delta is what encode_response of the text so far adds: whitespace the answer strips is never sent,
    and a space waits for the text after it."""
    from loraship.handler.batching import Sequence
    from loraship.handler.openai_chat import ChatRequest, ChatStreamWriter
    from loraship.handler.requests import GenerationParams

    writer = ChatStreamWriter(ChatRequest(messages=USER, model="m"), str.strip, tokenizer=None)
    pieces = ["\n", " Sage", "Maker ", " is", "\n\n"]
    seq = Sequence([1], GenerationParams(max_new_tokens=5), tokens=list(range(5)), logprobs=[-1.0] * 5)
    deltas = []
    for i, piece in enumerate(pieces[:-1]):
        deltas += [events([c])[0]["choices"][0]["delta"]["content"] for c in writer.tokens(seq, [(i, piece)])]
    seq.text, seq.finish_reason = "".join(pieces), "length"
    *last, done = events(writer.final(seq, [(4, pieces[-1])], None))
    assert deltas == ["Sage", "Maker", "  is"] and done == "[DONE]"
    assert last[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert "".join(deltas) == "".join(pieces).strip()


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(body=chat_bodies())
def test_fuzzed_chat_requests_get_a_reply_or_a_one_line_4xx(static, body):
    out = static.handle(request_input(body))
    if out.properties.get("content-type") == "text/event-stream":
        assert events(out.stream_content)[-1] == "[DONE]"
        return
    code, reply = read_output(out)
    assert code < 500, reply
    if code >= 400:
        assert set(reply) == {"error"} and reply["error"]["code"] == code, reply
        assert "\n" not in reply["error"]["message"] and "\r" not in reply["error"]["message"]
    else:
        assert reply["object"] == "chat.completion" and reply["choices"], reply
