"""Adapters, static batching, streaming, errors and custom pipelines, on real DJL Serving and on the host."""

import json
import threading

import pytest
import requests
from servers import KINDS, server_args, start_server
from test_adapters import PROMPT, peft_reference
from tiny_models import save_random_adapter

from loraship.build import build_model_dir
from loraship.runtime import Server, free_port

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def adapter_root(tiny_neox, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3)):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    return root


@pytest.fixture(scope="module", params=KINDS)
def server(request, tiny_neox, adapter_root, tmp_path_factory):
    md = build_model_dir(
        str(tiny_neox),
        tmp_path_factory.mktemp("md") / "tiny",
        {"alpha": adapter_root / "alpha", "beta": adapter_root / "beta"},
        batch_size=4,
        max_batch_delay=400,
        options={"adapter_roots": str(adapter_root)},
    )
    srv = start_server(md, tmp_path_factory, kind=request.param)
    yield srv
    srv.stop()


def gen(srv, body, **kw):
    return requests.post(srv.url + "/invocations", json=body, timeout=120, **kw)


def text(srv, adapter, prompt=PROMPT, tokens=10):
    r = gen(srv, {"inputs": prompt, "adapters": adapter, "parameters": {"max_new_tokens": tokens}})
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def test_adapters_from_model_dir_differ_and_match_peft(server, tiny_neox, adapter_root):
    alpha, beta, base = text(server, "alpha"), text(server, "beta"), text(server, "__base__")
    assert len({alpha, beta, base}) == 3
    assert alpha == peft_reference(tiny_neox, adapter_root / "alpha", PROMPT, 10)
    assert beta == peft_reference(tiny_neox, adapter_root / "beta", PROMPT, 10)
    assert base == peft_reference(tiny_neox, None, PROMPT, 10)


def test_adapter_by_query_and_sagemaker_header(server):
    expected = text(server, "beta")
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10}}
    assert (
        requests.post(server.url + "/invocations?adapter=beta", json=body, timeout=60).json()["generated_text"]
        == expected
    )
    r = requests.post(
        server.url + "/invocations", json=body, timeout=60, headers={"X-Amzn-SageMaker-Adapter-Identifier": "beta"}
    )
    assert r.json()["generated_text"] == expected


def test_concurrent_mixed_batch_equals_one_by_one(server):
    plan = [
        ("alpha", "What is SageMaker?"),
        ("__base__", "How much does it cost?"),
        ("beta", "Which regions?"),
        ("alpha", "How do I start?"),
    ]
    alone = [text(server, a, p, 8) for a, p in plan]
    results = [None] * len(plan)
    barrier = threading.Barrier(len(plan))

    def send(i):
        barrier.wait()
        a, p = plan[i]
        results[i] = gen(
            server, {"inputs": p, "adapters": a, "parameters": {"max_new_tokens": 8, "details": True}}
        ).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["generated_text"] for r in results] == alone
    assert max(r["details"]["batch_size"] for r in results) > 1, "DJL did not batch the concurrent requests"


def test_bad_request_in_a_batch_gets_its_own_error(server):
    bodies = [
        {"inputs": "fine?", "parameters": {"max_new_tokens": 4}},
        {"inputs": "x", "adapters": "nope"},
        {"inputs": "also fine?", "adapters": "alpha", "parameters": {"max_new_tokens": 4}},
    ]
    results = [None] * 3
    barrier = threading.Barrier(3)

    def send(i):
        barrier.wait()
        results[i] = gen(server, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "generated_text" in results[0].json() and "generated_text" in results[2].json()
    err = results[1].json()
    assert err["code"] == 404 and "known adapters: alpha, beta" in err["error"]
    # Alone, the same bad request gets its real status.
    assert gen(server, bodies[1]).status_code == 404


def test_errors_alone_get_real_statuses(server):
    assert gen(server, {"inputs": 3}).status_code == 400
    assert (
        requests.post(
            server.url + "/invocations", data=b"\xff{", timeout=30, headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    r = gen(server, {"inputs": "word " * 600, "parameters": {"max_new_tokens": 64}})
    assert r.status_code == 400 and "limit of 512" in r.json()["error"]
    assert gen(server, {"inputs": "x", "parameters": {"max_new_tokens": 100000}}).status_code == 400


def test_runtime_register_list_remove(server, adapter_root, tiny_neox):
    base = f"{server.url}/models/{server.model_name}/adapters"
    r = requests.post(base, params={"name": "gamma", "src": str(adapter_root / "gamma")}, timeout=60)
    assert r.status_code == 200, r.text
    names = {a["name"] for a in requests.get(base, timeout=10).json()["adapters"]}
    assert names == {"alpha", "beta", "gamma"}
    assert text(server, "gamma") == peft_reference(tiny_neox, adapter_root / "gamma", PROMPT, 10)
    assert requests.delete(f"{base}/gamma", timeout=30).status_code == 200
    r = gen(server, {"inputs": PROMPT, "adapters": "gamma"})
    assert r.status_code == 404
    # A source outside the model dir and option.adapter_roots is refused.
    r = requests.post(base, params={"name": "evil", "src": "/etc"}, timeout=30)
    assert r.status_code == 400 and "outside the allowed roots" in r.text


def test_stream_returns_chunks_then_details(server):
    r = requests.post(
        server.url + "/invocations",
        stream=True,
        timeout=60,
        json={
            "inputs": PROMPT,
            "adapters": "alpha",
            "stream": True,
            "parameters": {"max_new_tokens": 12, "details": True},
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/jsonlines")
    lines = [json.loads(line) for line in r.iter_lines() if line]
    final = lines[-1]
    assert final["details"]["adapter"] == "alpha"
    assert "".join(x["token"]["text"] for x in lines).strip() == final["generated_text"]
    # LMI's lines: every one has a token with its id and log-probability; the last also has the answer
    assert all(set(x["token"]) >= {"id", "text", "log_prob"} and x["token"]["log_prob"] <= 0 for x in lines)
    assert final["details"]["generated_tokens"] == len(lines) and "tokens" not in final["details"]
    assert final["generated_text"] == text(server, "alpha", tokens=12)


SHOUT = '''
from handler.pipelines import Pipeline


class Shout(Pipeline):
    """A test pipeline from the model dir: prompt as given, response upper-cased."""

    def encode_response(self, text):
        return "SHOUT:" + text.upper()
'''


@pytest.mark.parametrize("kind", KINDS)
def test_custom_pipeline_from_model_dir(kind, tiny_neox, tmp_path_factory):
    md = build_model_dir(
        str(tiny_neox), tmp_path_factory.mktemp("md") / "shout", options={"pipeline": "shout_pipeline:Shout"}
    )
    (md / "shout_pipeline.py").write_text(SHOUT)
    srv = start_server(md, tmp_path_factory, kind=kind)
    try:
        r = gen(srv, {"inputs": "hello", "parameters": {"max_new_tokens": 6}})
        assert r.status_code == 200 and r.json()["generated_text"].startswith("SHOUT:")
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_pipeline_fails_load_listing_known(kind, tiny_neox, tmp_path):
    md = build_model_dir(str(tiny_neox), tmp_path / "bad", options={"pipeline": "nope"})
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        srv = Server(md, port=free_port(), log_file=f, **server_args(kind))
        with pytest.raises(RuntimeError, match="exited"):
            srv.wait_ready(timeout=120)
        srv.stop()
    assert "unknown pipeline 'nope'; known pipelines: chat, instruction, text" in log.read_text()
