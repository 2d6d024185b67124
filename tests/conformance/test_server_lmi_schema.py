"""LMI's response schema through each server (the in-process details are in tests/test_lmi_schema.py): the
token lines, ``prefill`` and ``top_tokens`` reach the client as the handler wrote them, and
``option.output_formatter=sse`` streams server-sent events with their content type."""

import json

import pytest
import requests
from conf_support import serve
from servers import KINDS


@pytest.fixture(scope="module", params=KINDS)
def sse(request, tiny_neox, conformance_adapters, tmp_path_factory):
    s = serve(
        request.param, tiny_neox, conformance_adapters, tmp_path_factory, "md-sse", options={"output_formatter": "sse"},
        max_new_tokens=32, batching="continuous",
    )  # fmt: skip
    yield s
    s.stop()


def test_server_sent_events_and_details(sse):
    body = {"inputs": "What is Amazon SageMaker?", "adapters": "alpha", "stream": True}
    body["parameters"] = {"max_new_tokens": 6, "min_new_tokens": 6, "details": True}
    with requests.post(sse.url + "/invocations", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.content.decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: {") for e in events) and len(events) == 6
    rows = [json.loads(e[len("data: ") :]) for e in events]
    assert rows[-1]["details"]["adapter"] == "alpha" and rows[-1]["details"]["finish_reason"] == "length"
    body.update(stream=False)
    body["parameters"].update(decoder_input_details=True, top_n_tokens=2)
    reply = requests.post(sse.url + "/invocations", json=body, timeout=120).json()
    d = reply["details"]
    assert [t["id"] for t in d["tokens"]] == [row["token"]["id"] for row in rows]  # the same greedy tokens
    assert d["prefill"][0]["log_prob"] is None and all(t["log_prob"] <= 0 for t in d["prefill"][1:])
    assert [len(step) for step in d["top_tokens"]] == [2] * 6
