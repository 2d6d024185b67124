"""The adapter management API: the same answers from both servers (names and /models: test_server.py)."""

import pytest
import requests

pytestmark = pytest.mark.server


def get(srv, path):
    return requests.get(srv.url + path, timeout=30)


def adapters_url(srv):
    return f"{srv.url}/models/{srv.model_name}/adapters"


def test_adapter_listing_and_description(srv):
    r = get(srv, f"/models/{srv.model_name}/adapters")
    assert r.status_code == 200
    listed = {a["name"]: a for a in r.json()["adapters"]}
    assert set(listed) >= {"alpha", "beta"}
    assert listed["beta"] == {
        "name": "beta",
        "src": str(srv.model_dir.resolve() / "adapters" / "beta"),
        "preload": True,
        "pin": False,
    }
    r = get(srv, "/adapters/beta")  # the short form: one model is loaded
    assert r.status_code == 200 and r.json() == listed["beta"]
    r = get(srv, f"/models/{srv.model_name}/adapters/nope")
    assert r.status_code == 404 and r.json()["message"] == "The adapter nope was not found"


def ask(srv, adapter, prompt="adapter api?"):
    r = requests.post(
        srv.url + "/invocations",
        timeout=60,
        json={"inputs": prompt, "adapters": adapter, "parameters": {"max_new_tokens": 6}},
    )
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def test_register_update_unregister(srv, conformance_adapters):
    url = adapters_url(srv)
    r = requests.post(url, params={"name": "gamma", "src": str(conformance_adapters / "gamma")}, timeout=60)
    try:
        assert r.status_code == 200 and r.json() == {"status": "Adapter gamma registered"}, r.text
        gamma = ask(srv, "gamma")
        assert gamma != ask(srv, "__base__")
        assert "gamma" in {a["name"] for a in requests.get(url, timeout=30).json()["adapters"]}
        r = requests.post(f"{url}/gamma/update", params={"src": str(conformance_adapters / "delta")}, timeout=60)
        assert r.status_code == 200 and r.json() == {"status": "Adapter gamma updated"}, r.text
        assert ask(srv, "gamma") != gamma
        assert requests.get(f"{url}/gamma", timeout=30).json()["src"] == str(conformance_adapters / "delta")
    finally:
        r = requests.delete(f"{url}/gamma", timeout=60)
    assert r.status_code == 200 and r.json() == {"status": "Adapter gamma unregistered"}, r.text
    r = requests.post(srv.url + "/invocations", json={"inputs": "x", "adapters": "gamma"}, timeout=60)
    assert r.status_code == 404 and "unknown adapter 'gamma'" in r.json()["error"]


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"name": "x", "src": "/nonexistent/dir"}, 400, "outside the allowed roots"),
        ({"name": "x", "src": "{root}/../elsewhere"}, 400, "add its folder to option.adapter_roots"),
        ({"name": "lora", "src": "{root}/gamma"}, 400, "prefix 'lora_'"),
        ({"name": "x"}, 400, "The parameter src is required"),
        ({"src": "{root}/gamma"}, 400, "The parameter name is required"),
        ({"name": "alpha", "src": "{root}/gamma"}, 409, "already"),
        ({"name": "beta", "src": "{md}/adapters/beta"}, 409, "already exists"),
    ],
)
def test_bad_registrations_carry_the_handlers_explanation(srv, conformance_adapters, params, status, message):
    params = {k: v.format(root=conformance_adapters, md=srv.model_dir) for k, v in params.items()}
    r = requests.post(adapters_url(srv), params=params, timeout=60)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status and message in body["message"], body
    assert ask(srv, "alpha") == ask(srv, "alpha")  # still serving


def test_unknown_adapter_operations_are_404(srv):
    url = adapters_url(srv)
    for r in (
        requests.delete(f"{url}/nope", timeout=30),
        requests.post(f"{url}/nope/update", params={"src": "/x"}, timeout=30),
    ):
        assert r.status_code == 404 and r.json()["message"] == "The adapter nope was not found", r.text
