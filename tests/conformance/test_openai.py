"""OpenAI's chat completions through both servers, with the real clients: the ``openai`` Python client
(``base_url=http://host:port/v1``; real DJL Serving 0.36.0 routes ``/v1/chat/completions`` as ``/invocations``)
and lm-eval's ``local-chat-completions`` model on a tiny offline generation task. Each server serves a
continuous-batching model dir (DJL's async mode) and a static one (``batch_size=1``)."""

import json

import openai
import pytest
import requests
from conf_support import serve
from servers import KINDS

pytestmark = pytest.mark.server

QUESTIONS = ["What is Amazon SageMaker?", "How do I train a model?", "Which regions are supported?"]
#: LMI's finish reasons as OpenAI names them (the handler's choice; README, OpenAI chat completions).
OPENAI_REASON = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@pytest.fixture(scope="module", params=[(k, b) for k in KINDS for b in ("continuous", "static")], ids=str)
def chat(request, tiny_neox, conformance_adapters, tmp_path_factory):
    """(server, batching) with adapters alpha (seed) and beta; the instruction pipeline's template."""
    kind, batching = request.param
    s = serve(kind, tiny_neox, conformance_adapters, tmp_path_factory, f"md-chat-{batching}", max_new_tokens=64,
              batching=batching)  # fmt: skip
    s.batching = batching
    yield s
    s.stop()


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def error_text(err: openai.APIStatusError) -> str:
    """The server's message: OpenAI's error object (static batching), or the ``error`` of DJL's async-mode
    body ``{"code", "error"}``, which the client does not put in its own message."""
    body = err.body.get("error", err.body) if isinstance(err.body, dict) else err.body
    return body["message"] if isinstance(body, dict) else str(body)


def lmi(srv, question: str, adapter: str, tokens: int, **params) -> dict:
    body = {
        "inputs": question,
        "adapters": adapter,
        "parameters": {"max_new_tokens": tokens, "details": True, **params},
    }
    r = requests.post(srv.url + "/invocations", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", ["__base__", "alpha"])
def test_chat_completions_equal_the_lmi_answer(chat, model):
    expected = lmi(chat, QUESTIONS[0], model, 12)
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    reply = client(chat).chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == model
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == expected["generated_text"]
    assert choice.finish_reason == OPENAI_REASON[expected["details"]["finish_reason"]]
    assert reply.usage.prompt_tokens == expected["details"]["prompt_tokens"]
    assert reply.usage.completion_tokens == expected["details"]["generated_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client(chat).chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and len({c.id for c in chunks}) == 1
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.model_dump() == reply.usage.model_dump()
    *deltas, last = chunks[:-1]
    assert (
        all(c.choices[0].finish_reason is None for c in deltas)
        and last.choices[0].finish_reason == choice.finish_reason
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == expected["generated_text"]

    # A body with messages is a chat request on /invocations too (LMI's rule), with SSE framing when streamed.
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0}
    r = requests.post(chat.url + "/invocations", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected["generated_text"]
    r = requests.post(chat.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120)
    assert r.headers["content-type"].startswith("text/event-stream") and r.text.endswith("data: [DONE]\n\n")


def test_the_sagemaker_adapter_header_names_the_adapter_without_a_model(chat):
    expected = lmi(chat, QUESTIONS[1], "beta", 8)["generated_text"]
    assert expected != lmi(chat, QUESTIONS[1], "__base__", 8)["generated_text"]
    body = {"messages": [{"role": "user", "content": QUESTIONS[1]}], "max_tokens": 8, "temperature": 0}
    r = requests.post(
        chat.url + "/v1/chat/completions",
        json=body,
        headers={"X-Amzn-SageMaker-Adapter-Identifier": "beta"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected
    assert r.json()["model"] == "beta"


def test_logprobs_and_top_logprobs(chat):
    expected = lmi(chat, QUESTIONS[2], "alpha", 8, top_n_tokens=3)
    reply = client(chat).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == len(expected["details"]["tokens"])
    for entry, token in zip(content, expected["details"]["tokens"]):
        assert entry.token == token["text"] and entry.logprob == pytest.approx(token["log_prob"], abs=1e-4)
        assert entry.bytes == (list(entry.token.encode()) if entry.token else None)
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0], abs=1e-6)  # greedy: the chosen token is the argmax

    stream = client(chat).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=3, stream=True,
    )  # fmt: skip
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]


def test_errors_are_openai_errors_with_their_status(chat):
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as err:
        client(chat).chat.completions.create(model="no-such-adapter", messages=messages)
    assert "'no-such-adapter' does not exist" in error_text(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client(chat).chat.completions.create(model="alpha", messages=messages, temperature=3)
    assert "temperature must be <= 2" in error_text(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client(chat).chat.completions.create(model="alpha", messages=messages, extra_body={"parameters": {}})
    assert "unknown fields: parameters" in error_text(err.value)
    r = requests.post(chat.url + "/v1/chat/completions", json={"messages": messages, "model": "nope"}, timeout=60)
    if chat.batching == "static":  # the handler's body as it wrote it: OpenAI's error object
        assert r.json() == {
            "error": {"message": r.json()["error"]["message"], "type": "NotFoundError", "param": "model", "code": 404}
        }
    else:  # in async mode both servers send DJL's {"code", "error"}, the message in error
        assert r.json()["code"] == 404 and "'nope' does not exist" in r.json()["error"]
    # Neither server serves OpenAI's other routes (DJL Serving 0.36.0 routes only chat completions).
    with pytest.raises(openai.NotFoundError):
        client(chat).models.list()
    with pytest.raises(openai.NotFoundError):
        client(chat).completions.create(model="alpha", prompt="x")


def test_prompt_logprobs_score_a_reference_answer(chat):
    """vLLM's way of scoring a reference through the endpoint: continue_final_message, prompt_logprobs,
    max_tokens 1; the answer's tokens get their log-probabilities under the adapter."""
    answer = "SageMaker trains and hosts models"
    messages = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": answer}]
    extra = {"continue_final_message": True, "add_generation_prompt": False, "prompt_logprobs": 1}
    scored = {}
    for model in ("__base__", "alpha"):
        reply = client(chat).chat.completions.create(
            model=model, messages=messages, max_tokens=1, temperature=0, extra_body=extra
        )
        scores = reply.model_extra["prompt_logprobs"]
        assert len(scores) == reply.usage.prompt_tokens and scores[0] is None
        own = []
        for entry in scores[1:]:
            assert 1 <= len(entry) <= 2
            values = list(entry.values())
            first = values[0]  # the prompt's own token comes first
            assert first["logprob"] <= 0 and first["rank"] >= 1
            assert (first["rank"] == 1) == (len(entry) == 1 or first["logprob"] >= values[1]["logprob"])
            own.append(first)
        assert "".join(t["decoded_token"] for t in own).endswith(answer)
        scored[model] = [t["logprob"] for t in own]
        # the prompt without the answer is LMI's prompt for the question: the same values as LMI's prefill
        prefill = lmi(chat, QUESTIONS[0], model, 1, decoder_input_details=True)["details"]["prefill"]
        assert scored[model][: len(prefill) - 1] == pytest.approx([t["log_prob"] for t in prefill[1:]], abs=1e-4)
    assert scored["alpha"] != pytest.approx(scored["__base__"], abs=1e-3)  # the adapter is applied


LM_EVAL_TASK = """task: chat_toyqa
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}, cache_dir: {cache}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""


def test_lm_eval_local_chat_completions(chat, tmp_path):
    """lm-eval's local-chat-completions model (its base_url is the full /v1/chat/completions URL) on a tiny
    offline generation task: what it recorded is what the server answers the same request directly."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "toyqa.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in QUESTIONS))
    (tmp_path / "chat_toyqa.yaml").write_text(LM_EVAL_TASK.format(data=data, cache=tmp_path / "cache"))
    res = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={"base_url": chat.url + "/v1/chat/completions", "model": "alpha", "max_retries": 1,
                    "timeout": 120, "eos_string": "<|endoftext|>"},
        tasks=["chat_toyqa"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
    )  # fmt: skip
    samples = res["samples"]["chat_toyqa"]
    assert len(samples) == len(QUESTIONS) and "exact_match,none" in res["results"]["chat_toyqa"]
    for sample in samples:
        chat_str, _ = sample["arguments"][0]  # lm-eval's JsonChatStr (logged as a tuple) and its generation kwargs
        messages = json.loads(chat_str[0])
        assert messages == [{"role": "user", "content": sample["doc"]["question"]}]
        direct = client(chat).chat.completions.create(
            model="alpha", messages=messages, max_tokens=8, temperature=0, stop=["\n", "<|endoftext|>"], seed=1234
        )
        assert sample["resps"] == [[direct.choices[0].message.content]]
        assert "\n" not in direct.choices[0].message.content  # the server honours stop: lm-eval does not cut


def test_streams_back_to_back_leave_the_server_serving(chat):
    """The openai client's streams, each followed by a whole reply. On real DJL Serving with static batching
    this killed the server (OutOfMemoryError) in half the runs, until the handler sent a stream's last events
    as one message and its end message a moment later (handler/service.py, STREAM_END_GAP)."""
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    for i in range(20):
        chunks = list(
            client(chat).chat.completions.create(
                model=["alpha", "__base__"][i % 2], messages=messages, max_tokens=1 + i % 6, temperature=0,
                stream=True, stream_options={"include_usage": True}, logprobs=i % 3 == 0,
            )
        )  # fmt: skip
        assert chunks[-1].usage.completion_tokens >= 1
        r = requests.post(chat.url + "/invocations", json={"messages": messages, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
    assert requests.get(chat.url + "/ping", timeout=10).status_code == 200
