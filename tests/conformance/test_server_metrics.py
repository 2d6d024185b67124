"""The handler's metrics through each server's /server/metrics (SERVING_PROMETHEUS=true), read with
prometheus_client's parser: names, types and the Adapter label, and figures that match what was sent."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections import Counter, defaultdict

import pytest
import requests
from conf_support import serve
from differences import expect
from prometheus_client.parser import text_string_to_metric_families
from servers import KINDS

pytestmark = pytest.mark.server

MODES = [(kind, batching) for kind in KINDS for batching in ("continuous", "static")]


@pytest.fixture(scope="module", params=MODES, ids=[f"{k}-{b}" for k, b in MODES])
def prom(request, tiny_neox, conformance_adapters, tmp_path_factory):
    """md-metrics (adapters alpha and beta) served with SERVING_PROMETHEUS=true."""
    kind, batching = request.param
    s = serve(
        kind, tiny_neox, conformance_adapters, tmp_path_factory, "md-metrics", max_new_tokens=64,
        batching=batching, env={"SERVING_PROMETHEUS": "true"},
    )  # fmt: skip
    s.batching = batching
    yield s
    s.stop()


def scrape(srv, query: str = "") -> tuple[dict, dict]:
    """({(sample name, labels): value}, {family name: type}) from GET /server/metrics."""
    r = requests.get(srv.url + "/server/metrics" + query, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples, types = {}, {}
    for family in text_string_to_metric_families(r.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def delta(after: dict, before: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def ask(srv, body: dict) -> tuple[int, object]:
    r = requests.post(srv.url + "/invocations", json=body, timeout=120)
    if "jsonlines" in r.headers.get("content-type", ""):
        return r.status_code, [json.loads(line) for line in r.text.splitlines() if line.strip()]
    return r.status_code, r.json()


def details(reply) -> dict:
    """A reply's details; a stream's are on its final line."""
    return (reply[-1] if isinstance(reply, list) else reply)["details"]


def test_handler_metrics_are_served_with_their_adapter_and_match_the_replies(prom):
    before, _ = scrape(prom)
    d = {"details": True}
    bodies = [
        {"inputs": "What is SageMaker?", "parameters": {"max_new_tokens": 5, **d}},
        {"inputs": "How do I train?", "adapters": "__base__", "parameters": {"max_new_tokens": 9, **d}},
        {"inputs": "Stream it", "stream": True, "parameters": {"max_new_tokens": 7, **d}},
        {"inputs": "Alpha one", "adapters": "alpha", "parameters": {"max_new_tokens": 6, **d}},
        {"inputs": "Alpha streamed", "adapters": "alpha", "stream": True, "parameters": {"max_new_tokens": 8, **d}},
        {"inputs": "Alpha again", "adapters": "alpha", "parameters": {"max_new_tokens": 4, **d}},
        {"inputs": "Beta", "adapters": "beta", "parameters": {"max_new_tokens": 3, **d}},
        {"inputs": "Unknown adapter", "adapters": "nope"},
        {"inputs": "Bad", "parameters": {"max_new_tokens": -1}},
    ]
    with cf.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda b: ask(prom, b), bodies))
    assert [code for code, _ in replies] == [200] * 7 + [404, 400]
    tokens, rows, ok = defaultdict(int), Counter(), Counter()
    for body, (_, reply) in zip(bodies[:7], replies):
        adapter = body.get("adapters", "__base__")
        ok[adapter] += 1
        tokens[details(reply)["adapter"]] += details(reply)["generated_tokens"]
        rows[details(reply)["adapter"]] += 1
    assert ok == {"__base__": 3, "alpha": 3, "beta": 1} and rows == ok

    # The worker's lines reach the server through its stdout reader, a moment after the replies.
    deadline = time.monotonic() + 15
    while True:
        after, types = scrape(prom)
        seen = sum(v - before.get(k, 0.0) for k, v in after.items() if k[0].startswith("LorashipRequests_"))
        if seen >= len(bodies) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert types["LorashipRequests_200"] == types["LorashipOutputTokens"] == "counter"
    assert types["LorashipQueueSeconds"] == types["LorashipInferenceSeconds"] == "histogram"
    assert types["LorashipTokensPerSecond"] == types["LorashipAdapterLoadSeconds"] == "histogram"
    assert types["LorashipAdapterResident"] == "gauge"
    for adapter in ("__base__", "alpha", "beta"):
        a = {"Adapter": adapter}
        assert delta(after, before, "LorashipRequests_200_total", **a) == ok[adapter], adapter
        assert delta(after, before, "LorashipOutputTokens_total", **a) == tokens[adapter], adapter
        assert delta(after, before, "LorashipQueueSeconds_count", **a) == rows[adapter], adapter
        assert delta(after, before, "LorashipInferenceSeconds_count", **a) == rows[adapter], adapter
        # Every row waits less than it takes to finish: its queue and inference seconds are real durations.
        assert 0 < delta(after, before, "LorashipInferenceSeconds_sum", **a) < 60
        assert delta(after, before, "LorashipQueueSeconds_bucket", le="+Inf", **a) == rows[adapter]
    # TTFT: every row in continuous batching; in static batching only streams (generate() returns whole).
    ttft = rows if prom.batching == "continuous" else {"__base__": 1, "alpha": 1, "beta": 0}
    for adapter, n in ttft.items():
        assert delta(after, before, "LorashipTimeToFirstTokenSeconds_count", Adapter=adapter) == n, adapter
    assert delta(after, before, "LorashipRequests_404_total", Adapter="__unknown__") == 1
    assert delta(after, before, "LorashipRequests_400_total", Adapter="__unknown__") == 1
    assert after[("LorashipAdapterResident", (("Adapter", "alpha"),))] == 1
    assert after[("LorashipAdapterLoadSeconds_count", (("Adapter", "alpha"),))] >= 1

    # DJL's own per-request metrics, which the host reproduces: labelled with the model, in microseconds.
    model = {"Model": "md_metrics"}
    assert types["QueueTime"] == types["RequestLatency"] == "histogram"
    assert delta(after, before, "QueueTime_count", **model) == len(bodies)
    assert delta(after, before, "RequestLatency_count", **model) == len(bodies)
    host = next(dict(k[1])["Host"] for k in after if k[0] == "Response_2XX_total")
    codes = {c: delta(after, before, f"Response_{c}_total", Host=host) for c in ("2XX", "4XX")}
    if prom.batching == "continuous" and "race" in expect("async_response_metric", prom.kind):
        assert codes["2XX"] + codes["4XX"] == 9 and codes["2XX"] >= 7
    else:
        assert codes == {"2XX": 7, "4XX": 2}
    startup = ("StartupLatency", (("Host", host),)) in after
    assert startup == ("StartupLatency" in expect("startup_metrics", prom.kind))


def test_metrics_filter_by_family_name_as_djl(prom):
    requests.post(prom.url + "/invocations", json={"inputs": "x", "parameters": {"max_new_tokens": 2}}, timeout=60)
    _, types = scrape(prom, "?name[]=LorashipOutputTokens&name[]=QueueTime")
    assert types == {"LorashipOutputTokens": "counter", "QueueTime": "histogram"}
    # DJL matches the names without _total: the exposed counter name selects nothing.
    assert scrape(prom, "?name[]=LorashipOutputTokens_total")[1] == {}


def test_metrics_off_is_djls_400(srv):
    """Without SERVING_PROMETHEUS the endpoint answers as DJL Serving does (and only GET is routed)."""
    r = requests.get(srv.url + "/server/metrics", timeout=10)
    assert r.status_code == 400
    assert r.json()["message"].startswith("Prometheus is not enabled, set SERVING_PROMETHEUS environment var")
    assert requests.post(srv.url + "/server/metrics", timeout=10).status_code == 405
