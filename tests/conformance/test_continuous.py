"""Continuous batching through each server's async mode (`loraship build --batching continuous`): concurrent
requests, streamed or not, mixing adapters and lengths, each equal to what it gives alone, and each with
its own status while the others generate."""

import concurrent.futures as cf
import json
import time

import pytest
import requests
from conf_support import serve
from differences import expect
from servers import KINDS

QUESTIONS = ["What is Amazon SageMaker?", "How do I train a model?", "Which regions are supported?"]


@pytest.fixture(scope="module", params=KINDS)
def cont(request, tiny_neox, conformance_adapters, tmp_path_factory):
    s = serve(
        request.param, tiny_neox, conformance_adapters, tmp_path_factory, "md-cont", max_new_tokens=480,
        batching="continuous",
    )  # fmt: skip
    yield s
    s.stop()


def ask(srv, body: dict) -> tuple[int, str, object]:
    """(status, content type, reply): a stream's reply is its list of JSON lines."""
    r = requests.post(srv.url + "/invocations", json=body, stream=True, timeout=300)
    lines = [json.loads(line) for line in r.iter_lines() if line]
    kind = r.headers.get("content-type", "")
    return r.status_code, kind, lines if "jsonlines" in kind else lines[0]


def final_text(reply) -> str:
    return reply[-1]["generated_text"] if isinstance(reply, list) else reply["generated_text"]


def test_concurrent_streams_and_replies_mixing_adapters_equal_their_results_alone(cont):
    bodies = [
        {
            "inputs": QUESTIONS[i % 3],
            "adapters": ["alpha", "beta", "__base__"][i % 3],
            "stream": i % 5 != 4,  # 8 streams and 2 whole replies
            "parameters": {"max_new_tokens": 6 + 5 * i, "details": True},
        }
        for i in range(10)
    ]
    alone = [final_text(ask(cont, b)[2]) for b in bodies]
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: ask(cont, b), bodies))
    for body, expected, (code, kind, reply) in zip(bodies, alone, together):
        assert code == 200
        assert ("jsonlines" in kind) == body["stream"]
        assert final_text(reply) == expected
        if body["stream"]:
            assert "".join(line["token"]["text"] for line in reply).strip() == expected
    shared = [r[-1]["details"]["batch_size"] for _, _, r in together if isinstance(r, list)]
    assert max(shared) > 1  # they were decoded together
    assert len(set(alone)) > 3


def test_bad_requests_get_their_own_status_while_others_generate(cont):
    long = {
        "inputs": QUESTIONS[0],
        "stream": True,
        "parameters": {"max_new_tokens": 400, "min_new_tokens": 400, "details": True},
    }  # long enough to outlast the two answers by far, even with the compiled one-row step
    with cf.ThreadPoolExecutor(3) as pool:
        running = pool.submit(ask, cont, long)
        bad = requests.post(cont.url + "/invocations", json={"inputs": "x", "parameters": {"max_new_tokens": -1}})
        unknown = requests.post(cont.url + "/invocations", json={"inputs": "x", "adapters": "nope"})
        done_before = running.done()
        code, _, lines = running.result()
    assert (bad.status_code, unknown.status_code) == (400, 404)
    # In async mode DJL sends {"error", "code"} for a failed request (it drops the handler's other fields).
    assert bad.json()["code"] == 400 and "max_new_tokens" in bad.json()["error"]
    assert "nope" in unknown.json()["error"]
    assert not done_before and code == 200 and lines[-1]["details"]["generated_tokens"] == 400


def test_adapters_come_and_go_while_requests_generate(cont, conformance_adapters):
    """Register while another request streams; unregister while a request on that adapter generates: it
    finishes, and a new request for the adapter is refused."""
    url = f"{cont.url}/models/{cont.model_name}/adapters"
    long = {"stream": True, "parameters": {"max_new_tokens": 48, "min_new_tokens": 48, "details": True}}
    with cf.ThreadPoolExecutor(2) as pool:
        base_stream = pool.submit(ask, cont, {"inputs": QUESTIONS[0], **long})
        r = requests.post(url, params={"name": "gamma", "src": str(conformance_adapters / "gamma")}, timeout=60)
        assert r.status_code == 200, r.text
        assert base_stream.result()[0] == 200
    body = {"inputs": QUESTIONS[1], "adapters": "gamma", **long}
    with requests.post(cont.url + "/invocations", json=body, stream=True, timeout=300) as gamma:
        assert gamma.status_code == 200
        chunks = gamma.iter_lines()
        first = next(line for line in chunks if line)  # generating now
        with cf.ThreadPoolExecutor(1) as pool:
            removal = pool.submit(requests.delete, f"{url}/gamma", timeout=120)
            lines = [json.loads(first)] + [json.loads(line) for line in chunks if line]
            removed = removal.result()
    assert removed.status_code == 200, removed.text
    assert lines[-1].get("details", {}).get("generated_tokens") == 48, lines[-1]  # the running request finished
    after = requests.post(cont.url + "/invocations", json={"inputs": "x", "adapters": "gamma"}, timeout=60)
    assert after.status_code == 404


def test_a_stream_whose_client_goes_away(cont, request):
    """The host tells the handler (``cancel_request``), so the row leaves and its slot frees; real DJL
    Serving tells it nothing, so the row runs on to its end (a documented difference)."""
    kind = request.node.callspec.params["cont"]
    left = "a row left the batch (cancelled)"
    body = {"inputs": QUESTIONS[2], "stream": True, "parameters": {"max_new_tokens": 400, "min_new_tokens": 400}}
    with requests.post(cont.url + "/invocations", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line)  # generating now
    # leaving the block closed the connection mid-stream
    frees = expect("client_disconnect", kind).startswith("the row leaves")
    if frees:
        deadline = time.monotonic() + 60
        while left not in cont.log_path.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left in cont.log_path.read_text(errors="replace")
    short = {"inputs": QUESTIONS[0], "stream": True, "parameters": {"max_new_tokens": 4, "details": True}}
    code, _, lines = ask(cont, short)
    assert code == 200
    # Alone in the batch once the abandoned row has left; beside it while it still runs.
    assert lines[-1]["details"]["batch_size"] == (1 if frees else 2)
    assert (left in cont.log_path.read_text(errors="replace")) == frees


def test_a_registration_the_handler_refuses(cont, request, tmp_path):
    """In async mode real DJL Serving answers its adapter API before the handler has replied; the host
    waits for the reply, so a refused registration gets its real status (a documented difference)."""
    kind = request.node.callspec.params["cont"]
    broken = tmp_path / "broken"  # outside option.adapter_roots
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    url = f"{cont.url}/models/{cont.model_name}/adapters"
    r = requests.post(url, params={"name": "broken", "src": str(broken)}, timeout=60)
    answered = expect("async_adapter_failure", kind)
    if answered.startswith("200"):
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and "outside the allowed roots" in r.json()["message"], r.text
    # Either way the handler does not have it.
    after = requests.post(cont.url + "/invocations", json={"inputs": "x", "adapters": "broken"}, timeout=60)
    assert after.status_code == 404
    requests.delete(f"{url}/broken", timeout=60)  # DJL's registry has it
