"""Adapter registration over HTTP (POST /models/{m}/adapters?name=&src=): bad sources are refused with
a clear reason while registered adapters keep serving, and churn under load fails no request."""

import random
import shutil
import threading

import pytest
import requests
from rel_support import FIGURES, HANG_SECONDS, generate

pytestmark = pytest.mark.server

PROMPTS = ["What is Amazon SageMaker?", "How do I start?", "Which regions?"]


def register(live, name, src, timeout=HANG_SECONDS):
    return requests.post(live.adapters_url, params={"name": name, "src": str(src)}, timeout=timeout)


def listed(live) -> set[str]:
    return {a["name"] for a in requests.get(live.adapters_url, timeout=30).json()["adapters"]}


def baseline(live, adapters=("alpha", "beta", "")) -> dict:
    return {(a, p): generate(live.url, p, a) for a in adapters for p in PROMPTS}


def bad_source(case, root, tmp_path):
    if case == "absolute_elsewhere":
        return shutil.copytree(root / "gamma", tmp_path / "elsewhere")
    if case == "dotdot":
        shutil.copytree(root / "gamma", tmp_path / "outside")
        return f"{root}/../{tmp_path.name}/outside"
    if case == "relative_dotdot":
        return "../../../../../../../../etc"
    if case == "symlink_escape":
        target = shutil.copytree(root / "gamma", tmp_path / "real")
        link = root / f"link-{tmp_path.name}"
        link.symlink_to(target)
        return link
    if case == "system_dir":
        return "/etc"
    return {
        "pickle_only": root / "pickle-only",
        "other_base": root / "for-llama",
        "corrupt": root / "corrupt",
        "missing": root / "not-there",
        "not_an_adapter": root.parent,
    }[case]


@pytest.mark.parametrize(
    "case, reason",
    [
        ("absolute_elsewhere", "outside the allowed roots"),
        ("dotdot", "outside the allowed roots"),
        ("relative_dotdot", "outside the allowed roots"),
        ("symlink_escape", "outside the allowed roots"),
        ("system_dir", "outside the allowed roots"),
        ("pickle_only", "allow_pickle_adapters"),
        ("other_base", "trained on another base model"),
        ("corrupt", "unreadable"),
        ("missing", "not a folder"),
    ],
)
def test_bad_sources_are_refused_and_registered_adapters_keep_serving(healthy, adapter_root, tmp_path, case, reason):
    before_names, before = listed(healthy), baseline(healthy, ("alpha", "beta"))
    r = register(healthy, f"bad-{case}", bad_source(case, adapter_root, tmp_path))
    assert r.status_code == 400, r.text
    # DJL's error body for a refusal by the handler: its Output's code and message.
    assert r.json()["code"] == 400 and r.json()["type"] == "BadRequestException", r.json()
    assert reason in r.json()["message"], r.json()
    FIGURES.add("bad adapter registrations refused")
    assert listed(healthy) == before_names
    assert baseline(healthy, ("alpha", "beta")) == before
    r = requests.post(healthy.url + "/invocations", json={"inputs": "x", "adapters": f"bad-{case}"}, timeout=30)
    assert r.status_code == 404
    registry = healthy.model_dir / ".loraship" / "adapters.json"
    assert not registry.exists() or f"bad-{case}" not in registry.read_text()
    if case == "pickle_only":
        assert not (adapter_root.parent / "pickle-was-loaded").exists(), "the pickle was unpickled"


@pytest.mark.parametrize("name", ["../evil", "lora", "__base__", "a" * 65, "x y", "é"])
def test_bad_names_are_refused(healthy, adapter_root, name):
    r = register(healthy, name, adapter_root / "gamma")
    assert r.status_code == 400, r.text
    assert "invalid adapter name" in r.json()["message"]
    assert name not in listed(healthy)


def test_existing_name_is_refused_without_touching_it(healthy, adapter_root):
    """As in DJL: the handler is asked first and refuses another source under a taken name (409 with its
    message); the same source again passes the handler and DJL's own check answers 409."""
    before = baseline(healthy, ("alpha",))
    r = register(healthy, "alpha", adapter_root / "gamma")
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "BadRequestException" and "already registered" in r.json()["message"], r.json()
    assert baseline(healthy, ("alpha",)) == before
    assert register(healthy, "dup", adapter_root / "gamma").status_code == 200
    try:
        r = register(healthy, "dup", adapter_root / "gamma")
        assert r.status_code == 409, r.text
        assert r.json() == {
            "code": 409,
            "type": "IllegalArgumentException",
            "message": (
                "The adapter dup already exists. If you want to replace it, please unregistering before registering "
                "a new adapter with the same name."
            ),
        }
    finally:
        assert requests.delete(f"{healthy.adapters_url}/dup", timeout=HANG_SECONDS).status_code == 200
    assert "dup" not in listed(healthy)


def test_management_answers_have_djl_shapes(healthy, adapter_root):
    """The adapter API's bodies and statuses as DJL Serving 0.36.0 answers them (measured on it)."""
    url, m = healthy.url, healthy.model_name
    r = requests.post(
        healthy.adapters_url,
        params={"name": "shape", "src": str(adapter_root / "gamma"), "pin": "true"},
        timeout=HANG_SECONDS,
    )
    assert (r.status_code, r.json()) == (200, {"status": "Adapter shape registered"})
    try:
        assert requests.get(f"{healthy.adapters_url}/shape", timeout=30).json() == {
            "name": "shape",
            "src": str(adapter_root / "gamma"),
            "preload": True,
            "pin": True,
        }
        listing = requests.get(healthy.adapters_url, timeout=30).json()
        assert set(listing) == {"adapters"}
        assert {"name": "shape", "src": str(adapter_root / "gamma"), "preload": True, "pin": True} in listing[
            "adapters"
        ]
        assert requests.get(url + "/adapters", timeout=30).json() == listing  # the single-model short form
        page = requests.get(healthy.adapters_url, params={"limit": 1}, timeout=30).json()
        assert page == {"nextPageToken": "1", "adapters": listing["adapters"][:1]}
        rest = requests.get(healthy.adapters_url, params={"limit": 100, "next_page_token": 1}, timeout=30).json()
        assert rest == {"adapters": listing["adapters"][1:]}
        r = requests.post(
            f"{healthy.adapters_url}/shape/update", params={"src": str(adapter_root / "delta")}, timeout=HANG_SECONDS
        )
        assert (r.status_code, r.json()) == (200, {"status": "Adapter shape updated"})
        assert requests.get(f"{url}/adapters/shape", timeout=30).json()["src"] == str(adapter_root / "delta")
    finally:
        r = requests.delete(f"{healthy.adapters_url}/shape", timeout=HANG_SECONDS)
    assert (r.status_code, r.json()) == (200, {"status": "Adapter shape unregistered"})

    def error(method, path, code, type_, message, **kw):
        r = requests.request(method, url + path, timeout=30, **kw)
        assert (r.status_code, r.json()) == (code, {"code": code, "type": type_, "message": message}), (path, r.text)

    error("GET", f"/models/{m}/adapters/shape", 404, "BadRequestException", "The adapter shape was not found")
    error("DELETE", f"/models/{m}/adapters/nope", 404, "BadRequestException", "The adapter nope was not found")
    error("POST", f"/models/{m}/adapters/nope/update", 404, "BadRequestException", "The adapter nope was not found")
    error(
        "GET",
        f"/models/{m}/adapters/nope",
        404,
        "BadRequestException",
        "The adapter nick was not found",
        headers={"X-Amzn-SageMaker-Adapter-Alias": "nick"},
    )
    error(
        "POST",
        f"/models/{m}/adapters",
        400,
        "BadRequestException",
        "The parameter name is required",
        params={"src": str(adapter_root / "gamma")},
    )
    error(
        "POST",
        f"/models/{m}/adapters",
        400,
        "BadRequestException",
        "The parameter src is required",
        params={"name": "x"},
    )
    error("GET", f"/models/{m}-not/adapters", 404, "BadRequestException", f"The model {m}-not was not found")
    error(
        "PUT",
        f"/models/{m}/adapters",
        405,
        "MethodNotAllowedException",
        "Requested method is not allowed, please refer to API document.",
    )


def churn_under_load(live, root, cycles: int, load_threads: int = 3) -> dict:
    """Register, update and remove adapters while other threads send requests on alpha, beta and the base."""
    expected = baseline(live)
    stop = threading.Event()
    failures, served = [], [0] * load_threads

    def load(i):
        rng = random.Random(i)
        while not stop.is_set():
            adapter, prompt = rng.choice(list(expected))
            try:
                r = requests.post(
                    live.url + "/invocations",
                    timeout=HANG_SECONDS,
                    json={"inputs": prompt, "adapters": adapter or "__base__", "parameters": {"max_new_tokens": 4}},
                )
                if r.status_code != 200 or r.json()["generated_text"] != expected[(adapter, prompt)]:
                    failures.append((adapter, prompt, r.status_code, r.text[:200]))
            except requests.RequestException as exc:
                failures.append((adapter, prompt, "no reply", repr(exc)))
            served[i] += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(load_threads)]
    for t in threads:
        t.start()
    events, churn_errors = 0, []
    try:
        for c in range(cycles):
            name = f"churn-{c % 3}"
            steps = [
                ("register", lambda name=name: register(live, name, root / "gamma")),
                (
                    "update",
                    lambda name=name: requests.post(
                        f"{live.adapters_url}/{name}/update", params={"src": str(root / "delta")}, timeout=HANG_SECONDS
                    ),
                ),
                (
                    "serve",
                    lambda name=name: requests.post(
                        live.url + "/invocations", timeout=HANG_SECONDS, json={"inputs": "q", "adapters": name}
                    ),
                ),
                ("unregister", lambda name=name: requests.delete(f"{live.adapters_url}/{name}", timeout=HANG_SECONDS)),
            ]
            for step, call in steps:
                r = call()
                if r.status_code != 200:
                    churn_errors.append((c, step, r.status_code, r.text[:200]))
                events += step != "serve"
    finally:
        stop.set()
        for t in threads:
            t.join(HANG_SECONDS)
    return {"failures": failures, "churn_errors": churn_errors, "events": events, "served": sum(served)}


def test_adapter_churn_under_load_fails_no_request(healthy, adapter_root):
    before = listed(healthy)
    result = churn_under_load(healthy, adapter_root, cycles=6)
    FIGURES.add("adapter churn events under load", result["events"])
    FIGURES.add("requests served during churn", result["served"])
    FIGURES.add("requests failed during churn", len(result["failures"]))
    assert result["churn_errors"] == []
    assert result["failures"] == [], result["failures"][:5]
    assert result["served"] > 0
    assert listed(healthy) == before


@pytest.mark.soak
def test_soak_adapter_churn(healthy, adapter_root):
    result = churn_under_load(healthy, adapter_root, cycles=150, load_threads=4)
    FIGURES.add("adapter churn events under load", result["events"])
    FIGURES.add("requests served during churn", result["served"])
    FIGURES.add("requests failed during churn", len(result["failures"]))
    assert result["churn_errors"] == [] and result["failures"] == []
