"""Admission limits through both servers: each limit refuses at admission (413, naming the limit, its
value and the request's figure), just under it succeeds, and a flood of over-limit requests leaves the
good requests in flight with their normal results."""

import threading
import time

import pytest
import requests
from conf_support import serve
from servers import KINDS

pytestmark = pytest.mark.server
LIMITS = {"max_inputs_per_request": "2", "max_request_tokens": "300", "max_batch_total_tokens": "400"}
PROMPT = "Where is it?"


@pytest.fixture(scope="module", params=KINDS)
def limited(request, tiny_neox, conformance_adapters, tmp_path_factory):
    s = serve(
        request.param,
        tiny_neox,
        conformance_adapters,
        tmp_path_factory,
        "md-limits",
        options=LIMITS,
        max_new_tokens=256,
    )
    yield s
    s.stop()


def post(srv, body):
    start = time.perf_counter()
    r = requests.post(srv.url + "/invocations", json=body, timeout=120)
    return r, time.perf_counter() - start


def prompt_tokens(srv) -> int:
    r, _ = post(srv, {"inputs": PROMPT, "parameters": {"max_new_tokens": 1, "details": True}})
    assert r.status_code == 200, r.text
    return r.json()["details"]["prompt_tokens"]


def test_inputs_per_request(limited):
    r, _ = post(limited, {"inputs": [PROMPT, PROMPT], "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200 and len(r.json()) == 2, r.text
    r, seconds = post(limited, {"inputs": [PROMPT] * 1000, "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 413 and seconds < 1.0, (r.text, seconds)
    assert "has 1000 inputs; option.max_inputs_per_request is 2" in r.json()["error"]


def test_tokens_per_request(limited):
    new = 150 - prompt_tokens(limited)  # two inputs of the same prompt: exactly 300 tokens
    r, _ = post(limited, {"inputs": [PROMPT, PROMPT], "parameters": {"max_new_tokens": new}})
    assert r.status_code == 200, r.text
    r, seconds = post(limited, {"inputs": [PROMPT, PROMPT], "parameters": {"max_new_tokens": new + 1}})
    assert r.status_code == 413 and seconds < 1.0, (r.text, seconds)
    assert "costs 302 tokens" in r.json()["error"] and "option.max_request_tokens is 300" in r.json()["error"]


def test_a_flood_of_over_limit_requests_leaves_good_ones_alone(limited):
    good = [
        {"inputs": p, "adapters": a, "parameters": {"max_new_tokens": 24}}
        for p, a in (("What is SageMaker?", "alpha"), ("How much?", "__base__"), ("Which regions?", "beta"))
    ]
    alone = [post(limited, b)[0].json()["generated_text"] for b in good]
    over = {"inputs": [PROMPT] * 50, "parameters": {"max_new_tokens": 1}}
    got, refused = [None] * len(good), []

    def send_good(i):
        got[i] = post(limited, good[i])[0]

    def flood():
        for _ in range(10):
            refused.append(post(limited, over)[0].status_code)

    threads = [threading.Thread(target=send_good, args=(i,)) for i in range(len(good))]
    threads += [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert refused == [413] * 40
    assert [r.status_code for r in got] == [200] * len(good)
    assert [r.json()["generated_text"] for r in got] == alone
