"""The handler served over HTTP, on real DJL Serving and on the host: routes, names, shapes, errors."""

import json
import subprocess

import pytest
import requests
from differences import expect
from servers import KINDS, processes_left, server_args, start_server

from loraship.build import build_model_dir
from loraship.runtime import Server, free_port

pytestmark = pytest.mark.server


@pytest.fixture(scope="module", params=KINDS)
def server(request, tiny_neox, tmp_path_factory):
    # A dash in the folder name: DJL serves it as tiny_md.
    model_dir = build_model_dir(str(tiny_neox), tmp_path_factory.mktemp("md") / "tiny-md", max_new_tokens=64)
    srv = start_server(model_dir, tmp_path_factory, kind=request.param)
    yield srv
    srv.stop()


def post(srv, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(srv.url + path, data=data, headers={"content-type": "application/json"}, timeout=120, **kw)


def test_ping(server):
    r = requests.get(server.url + "/ping", timeout=10)
    assert r.status_code == 200
    assert server.model_name == "tiny_md"
    assert r.json() == {"tiny_md": {"status": "Healthy"}}


def test_models_list_and_describe_have_djl_shapes(server):
    url = server.model_dir.resolve().as_uri().replace("file:///", "file:/") + "/"
    r = requests.get(server.url + "/models", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"models": [{"modelName": "tiny_md", "modelUrl": url, "status": "READY"}]}
    assert requests.get(server.url + "/models?limit=0", timeout=10).json() == {"nextPageToken": "0", "models": []}
    r = requests.get(server.url + "/models/tiny_md", timeout=10)
    assert r.status_code == 200
    [workflow] = r.json()
    assert workflow["workflowName"] == "tiny_md"
    [model] = workflow["models"]
    assert set(model) == {
        "modelName",
        "modelUrl",
        "batchSize",
        "maxBatchDelayMillis",
        "maxIdleSeconds",
        "queueSize",
        "requestInQueue",
        "status",
        "loadedAtStartup",
        "workerGroups",
    }
    assert (model["modelName"], model["modelUrl"], model["status"], model["batchSize"]) == (
        "tiny_md",
        url,
        "Healthy",
        1,
    )
    [group] = model["workerGroups"]
    assert set(group) == {"device", "minWorkers", "maxWorkers", "workers"}
    assert [set(w) for w in group["workers"]] == [{"id", "startTime", "status"}]
    assert group["workers"][0]["status"] == "READY"


def test_the_folder_name_is_not_the_model_name(server):
    """DJL's answers for a model it does not have: the folder's own name (tiny-md) is one."""
    r = post(server, "/predictions/tiny-md", {"inputs": "x"})
    assert (r.status_code, r.json()) == (
        404,
        {"code": 404, "type": "ModelNotFoundException", "message": "Model or workflow not found: tiny-md"},
    )
    r = requests.get(server.url + "/models/tiny-md", timeout=10)
    assert (r.status_code, r.json()) == (
        404,
        {"code": 404, "type": "ModelNotFoundException", "message": "Workflow not found: tiny-md"},
    )
    r = requests.get(server.url + "/models/tiny-md/adapters", timeout=10)
    assert (r.status_code, r.json()) == (
        404,
        {"code": 404, "type": "BadRequestException", "message": "The model tiny-md was not found"},
    )


def test_invocations_returns_generated_text_without_template(server):
    r = post(
        server,
        "/invocations",
        {"inputs": "What is Amazon SageMaker?", "parameters": {"max_new_tokens": 16, "details": True}},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["generated_text"], str)
    for marker in ("### Instruction", "### Response", "Below is an instruction"):
        assert marker not in body["generated_text"]
    assert 0 < body["details"]["generated_tokens"] <= 16


def test_predictions_route_and_list_input(server):
    name = server.model_name
    r = post(server, f"/predictions/{name}", {"inputs": ["a?", "b?"], "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 200, r.text
    assert [set(x) for x in r.json()] == [{"generated_text"}, {"generated_text"}]


def test_served_equals_in_process_greedy(server, tiny_neox):
    from harness import init_input, read_output, request_input

    from loraship.handler.service import HandlerService

    body = {"inputs": "How do I get started?", "parameters": {"max_new_tokens": 12}}
    svc = HandlerService()
    svc.handle(init_input({"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "device_id": "-1"}))
    _, local = read_output(svc.handle(request_input(body)))
    assert post(server, "/invocations", body).json() == local


def test_bad_json_is_400_naming_the_field_and_server_keeps_serving(server):
    r = post(server, "/invocations", b"{oops")
    assert r.status_code == 400
    assert r.json()["field"] == "body"
    r = post(server, "/invocations", {"inputs": "x", "parameters": {"max_new_tokens": -3}})
    assert r.status_code == 400 and r.json()["field"] == "parameters.max_new_tokens"
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    assert post(server, "/invocations", {"inputs": "still there?", "parameters": {"max_new_tokens": 2}}).ok


@pytest.mark.parametrize("kind", KINDS)
def test_stop_leaves_no_worker_behind(kind, tiny_neox, tmp_path):
    model_dir = build_model_dir(str(tiny_neox), tmp_path / "md")
    srv = Server(model_dir, port=free_port(), log_file=subprocess.DEVNULL, **server_args(kind))
    srv.wait_ready(timeout=240)
    pgid = srv.proc.pid
    srv.stop()
    left = processes_left("-g", str(pgid))
    assert left == [], f"processes left in the server's group: {left}"


def test_headers_named_like_djl_batch_keys(server):
    """A client header named like DJL's batch keys must not make the worker misparse its request."""
    body = json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 2}})
    for headers in ({"batch_size": "3"}, {"X-Amzn-SageMaker-Custom-Attributes": "batch_000.data=1"}):
        r = requests.post(
            server.url + "/invocations", data=body, timeout=30, headers={"content-type": "application/json", **headers}
        )
        if server.kind == "host":
            assert r.status_code == 400 and "reserved" in r.json()["message"], expect("batch_key_headers", "host")
        else:
            assert r.status_code == 200 and "generated_text" in r.json(), expect("batch_key_headers", "djl")
    assert post(server, "/invocations", {"inputs": "ok?", "parameters": {"max_new_tokens": 2}}).ok


def test_query_adapter_must_be_registered_with_the_server(server):
    """DJL checks ?adapter= against its own registry before the handler sees the request: an unknown
    name, and even __base__, get 424 with an empty body (the body's "adapters" and the SageMaker header
    have no such check: the handler answers 404 naming the known adapters)."""
    body = {"inputs": "x", "parameters": {"max_new_tokens": 2}}
    for name in ("nope", "__base__"):
        r = post(server, f"/invocations?adapter={name}", body)
        assert (r.status_code, r.content) == (424, b""), r.text
    r = post(server, "/invocations", {**body, "adapters": "nope"})
    assert r.status_code == 404 and "known adapters" in r.json()["error"]
