"""The Python worker killed mid-request and while idle, on both servers, with the recovery measured.

Each server gets its own model dir (built by ``build_model_dir``, so with its ``retry_threshold``) and a
runtime-registered adapter. The figures (seconds from the kill to the first 200, requests failed
meanwhile) are printed in the "reliability figures" section of the test summary.
"""

import time

import pytest
import requests
from conf_support import serve
from differences import expect
from rel_support import FIGURES, Hold, kill_worker, ping, worker_pids
from servers import KINDS

pytestmark = pytest.mark.server
PROBE = {"inputs": "after the crash?", "parameters": {"max_new_tokens": 4}}


@pytest.fixture(scope="module", params=KINDS)
def crashable(request, tiny_neox, conformance_adapters, tmp_path_factory):
    s = serve(request.param, tiny_neox, conformance_adapters, tmp_path_factory, "md-crash", max_new_tokens=16)
    r = requests.post(
        f"{s.url}/models/{s.model_name}/adapters",
        timeout=60,
        params={"name": "gamma", "src": str(conformance_adapters / "gamma")},
    )
    assert r.status_code == 200, r.text
    yield s
    s.stop()


def answers(srv) -> dict[str, str]:
    out = {}
    for adapter in ("__base__", "alpha", "gamma"):
        r = requests.post(srv.url + "/invocations", json={**PROBE, "adapters": adapter}, timeout=60)
        assert r.status_code == 200, (adapter, r.text)
        out[adapter] = r.json()["generated_text"]
    return out


def until_served(srv, start: float, deadline_s: float = 240) -> tuple[float, list]:
    """Probe every 0.25 s until a 200: (seconds since ``start``, [(status, type) of each failure])."""
    failures = []
    while time.monotonic() - start < deadline_s:
        try:
            r = requests.post(srv.url + "/invocations", json=PROBE, timeout=60)
        except requests.RequestException as exc:
            failures.append((0, type(exc).__name__))
        else:
            if r.status_code == 200:
                return time.monotonic() - start, failures
            failures.append((r.status_code, r.json().get("type") if r.content else ""))
        time.sleep(0.25)
    pytest.fail(f"{srv.name} served nothing for {deadline_s:.0f}s after the crash; failures: {failures[-5:]}")


def test_worker_killed_mid_request_recovers_with_runtime_adapters(crashable):
    srv = crashable
    before = answers(srv)
    hold = Hold(srv.url, srv.model_dir, 8)
    old = kill_worker(srv.proc.pid)
    killed = time.monotonic()
    in_flight = hold.join()
    assert in_flight.status == 503, in_flight.text
    kind = in_flight.json()["type"]
    assert kind == ("WlmException" if srv.kind == "djl" else "WorkerDiedException"), in_flight.text
    r = requests.get(srv.url + "/ping", timeout=10)  # at once: the replacement is still loading
    expected = (200, "Healthy") if srv.kind == "djl" else (500, "Unhealthy")
    assert (r.status_code, r.json()[srv.model_name]["status"]) == expected, expect("ping_during_restart", srv.kind)
    seconds, failures = until_served(srv, killed)
    assert ping(srv.url) == 200
    assert answers(srv) == before  # base, the seed adapter and the runtime-registered one
    assert worker_pids(srv.proc.pid) not in ([], [old])
    assert {s for s, _ in failures} <= {503}, failures
    FIGURES.set(f"{srv.kind}: seconds from a mid-request worker kill to the first 200", round(seconds, 1))
    FIGURES.set(f"{srv.kind}: requests failed meanwhile (probing every 0.25 s)", len(failures))
    if srv.kind == "djl":
        assert "WlmCapacityException" in {t for _, t in failures}, expect("mid_request_crash", "djl")


def test_worker_killed_while_idle(crashable):
    srv = crashable
    before = answers(srv)
    kill_worker(srv.proc.pid)
    killed = time.monotonic()
    time.sleep(3)  # idle: the server has seen the worker's pipes close before the next request
    if srv.kind == "host":
        seconds, failures = until_served(srv, killed)
        assert failures == [] and answers(srv) == before, expect("idle_worker_crash", "host")
        FIGURES.set(
            "host: seconds from an idle worker kill to the first 200 (first probe after 3 s)", round(seconds, 1)
        )
        return
    # Real DJL Serving 0.36.0 never replaces it (README, "DJL Serving here"): what its users see.
    for _ in range(3):
        r = requests.post(srv.url + "/invocations", json=PROBE, timeout=60)
        assert r.status_code == 400 and r.json()["message"] == "Backend Python process is stopped.", expect(
            "idle_worker_crash", "djl"
        )
        assert ping(srv.url) == 200
