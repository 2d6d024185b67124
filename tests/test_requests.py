import json

import pytest

from loraship.handler.errors import BadRequest
from loraship.handler.requests import MAX_STOP_STRINGS, parse_body


def parse(body, **kw):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_body(raw, max_cap=256, default_max=64, **kw)


def test_single_input_defaults():
    req = parse({"inputs": "Hi"})
    assert req.items == ["Hi"] and not req.is_list
    assert req.params.max_new_tokens == 64 and not req.params.do_sample
    assert req.adapters == [""]


def test_list_input_with_adapters():
    req = parse({"inputs": ["a", "b"], "adapters": ["x", "__base__"], "parameters": {"max_new_tokens": 8}})
    assert req.is_list and req.adapters == ["x", ""] and req.params.max_new_tokens == 8


def test_adapter_sources_in_order_of_precedence():
    assert parse({"inputs": "a", "adapters": "body"}, query_adapter="q", header_adapter="h").adapters == ["body"]
    assert parse({"inputs": "a"}, query_adapter="q", header_adapter="h").adapters == ["q"]
    assert parse({"inputs": "a"}, header_adapter="h").adapters == ["h"]


def test_temperature_implies_sampling_and_zero_means_greedy():
    assert parse({"inputs": "a", "parameters": {"temperature": 0.7}}).params.do_sample
    assert not parse({"inputs": "a", "parameters": {"temperature": 0}}).params.do_sample


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", "body"),
        (b"\xff\xfe", "body"),
        (b"", "body"),
        ([1, 2], "body"),
        ({"parameters": {}}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": ["ok", 3]}, "inputs[1]"),
        ({"inputs": "a", "parameters": []}, "parameters"),
        ({"inputs": "a", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"max_new_tokens": 10**9}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"max_new_tokens": "8"}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"max_new_tokens": True}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"max_new_tokens": 8, "min_new_tokens": 9}}, "parameters.min_new_tokens"),
        ({"inputs": "a", "parameters": {"temperature": -1}}, "parameters.temperature"),
        ({"inputs": "a", "parameters": {"top_p": 0}}, "parameters.top_p"),
        ({"inputs": "a", "parameters": {"top_p": 1.5}}, "parameters.top_p"),
        ({"inputs": "a", "parameters": {"top_k": 1.5}}, "parameters.top_k"),
        ({"inputs": "a", "parameters": {"stop": ["x"] * (MAX_STOP_STRINGS + 1)}}, "parameters.stop"),
        ({"inputs": "a", "parameters": {"stop": [1]}}, "parameters.stop"),
        ({"inputs": "a", "parameters": {"bogus": 1}}, "parameters.bogus"),
        ({"inputs": "a", "parameters": {"do_sample": "yes"}}, "parameters.do_sample"),
        ({"inputs": "a", "surprise": 1}, "surprise"),
        ({"inputs": "a", "adapters": ["x"]}, "adapters"),
        ({"inputs": ["a", "b"], "adapters": ["x"]}, "adapters"),
        ({"inputs": "a", "adapters": 3}, "adapters"),
        ({"inputs": ["a", "b"], "stream": True}, "stream"),
        ({"inputs": "a", "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_name_the_field(body, field):
    with pytest.raises(BadRequest) as err:
        parse(body)
    assert err.value.field == field
    assert err.value.status == 400
    assert err.value.to_json()["field"] == field
