"""Faults: the Python worker killed mid-request and while idle, and full server restarts. DJL restarts
the worker, in-flight requests fail with a clear 503, queued and later ones are served, and adapters
registered at runtime are there again after a worker restart and after a full restart."""

import json
import re
import shutil
import threading
import time

import pytest
import requests
from rel_support import (
    FIGURES,
    HANG_SECONDS,
    Hold,
    generate,
    invoke,
    kill_worker,
    listening_addresses,
    stream_many,
    wait_healthy,
    worker_pids,
)

pytestmark = pytest.mark.server


def register(live, name, src):
    r = requests.post(live.adapters_url, params={"name": name, "src": str(src)}, timeout=HANG_SECONDS)
    assert r.status_code == 200, r.text


def unregister(live, name):
    r = requests.delete(f"{live.adapters_url}/{name}", timeout=HANG_SECONDS)
    assert r.status_code == 200, r.text


def listed(live) -> dict[str, str]:
    return {a["name"]: a["src"] for a in requests.get(live.adapters_url, timeout=30).json()["adapters"]}


def crash_mid_request(live, mu_src) -> dict:
    """SIGKILL the worker while it serves a slow request, with two requests queued behind it."""
    url, out = live.url, {}

    def call(key, body):
        out[key] = invoke(url, body)

    hold, threads = Hold(url, live.model_dir, 8), []
    for key, adapter in (("queued_runtime", "kappa"), ("queued_base", "__base__")):
        threads.append(
            threading.Thread(
                target=call,
                args=(key, {"inputs": "after the crash?", "adapters": adapter, "parameters": {"max_new_tokens": 4}}),
            )
        )
        threads[-1].start()
    time.sleep(0.5)
    old = kill_worker(live.pid)
    time.sleep(0.5)
    # An adapter operation while DJL restarts the worker: it waits for the new process.
    out["register_mu"] = requests.post(
        live.adapters_url, params={"name": "mu", "src": str(mu_src)}, timeout=HANG_SECONDS * 3
    )
    for t in threads:
        t.join(HANG_SECONDS * 3)
    out["in_flight"] = hold.join()
    out["old_pid"] = old
    return out


def check_crash(live, out, expected):
    # Requests that were only queued waited for the new worker, and the runtime adapter was back for them.
    assert out["queued_runtime"].status == 200, out["queued_runtime"].text
    assert out["queued_runtime"].json()["generated_text"] == expected["kappa"]
    assert out["queued_base"].status == 200, out["queued_base"].text
    assert out["register_mu"].status_code == 200, out["register_mu"].text
    assert generate(live.url, "after the crash?", "mu") == expected["kappa"]  # the same weights
    unregister(live, "mu")
    r = out["in_flight"]
    assert r.status == 503 and r.json()["type"] == "WorkerDiedException", r.text
    assert "exited while serving this request" in r.json()["message"]
    wait_healthy(live.url)
    assert worker_pids(live.pid) not in ([], [out["old_pid"]])
    assert {a: generate(live.url, "after the crash?", a) for a in expected} == expected
    assert stream_many(live.url, 20) == []  # the new process's connection streams safely too
    FIGURES.add("worker restarts survived")
    FIGURES.add("in-flight requests failed by a crash (503)")


@pytest.fixture
def kappa(healthy, adapter_root):
    """An adapter registered at runtime (not in the model dir)."""
    register(healthy, "kappa", adapter_root / "epsilon")
    yield "kappa"
    unregister(healthy, "kappa")


def test_worker_killed_mid_request_restarts_with_runtime_adapters(healthy, kappa, adapter_root):
    expected = {a: generate(healthy.url, "after the crash?", a) for a in ("kappa", "alpha", "beta", "")}
    check_crash(healthy, crash_mid_request(healthy, adapter_root / "epsilon"), expected)
    assert "kappa" in listed(healthy)
    replays = re.findall(r"(\d+) of (\d+) adapter\(s\) registered again", healthy.log_text())
    assert replays and all(ok == total for ok, total in replays), replays


def test_worker_killed_while_idle_is_replaced_before_the_next_request(healthy, kappa, adapter_root):
    expected = generate(healthy.url, "idle?", "kappa")
    old = kill_worker(healthy.pid)
    time.sleep(0.5)
    # Sent while the worker is gone: the adapter operation and the request wait for the replacement.
    register(healthy, "lambda", adapter_root / "epsilon")
    try:
        assert generate(healthy.url, "idle?", "kappa") == expected
        assert generate(healthy.url, "idle?", "lambda") == expected  # the same weights (epsilon)
    finally:
        unregister(healthy, "lambda")
    wait_healthy(healthy.url)
    assert worker_pids(healthy.pid) not in ([], [old])
    FIGURES.add("worker restarts survived")


def test_updated_seed_adapter_keeps_its_update_after_a_worker_restart(healthy, kappa):
    """alpha is also the seed adapter (option.adapter_checkpoint), which a new worker loads by itself
    from the model dir: the host's replay must then update it, not fail to register it again."""
    url, prompt = healthy.url, "updated?"
    original, updated = generate(url, prompt, "alpha"), generate(url, prompt, "kappa")
    src = dict(listed(healthy))["kappa"]
    requests.post(f"{healthy.adapters_url}/alpha/update", params={"src": src}, timeout=HANG_SECONDS).raise_for_status()
    try:
        assert generate(url, prompt, "alpha") == updated
        kill_worker(healthy.pid)
        time.sleep(0.5)
        assert generate(url, prompt, "alpha") == updated
        FIGURES.add("worker restarts survived")
    finally:
        requests.post(
            f"{healthy.adapters_url}/alpha/update",
            timeout=HANG_SECONDS,
            params={"src": str(healthy.model_dir / "adapters" / "alpha")},
        ).raise_for_status()
    assert generate(url, prompt, "alpha") == original


@pytest.mark.soak
def test_soak_repeated_worker_crashes(healthy, kappa, adapter_root):
    expected = {a: generate(healthy.url, "after the crash?", a) for a in ("kappa", "alpha", "beta", "")}
    for _ in range(8):
        check_crash(healthy, crash_mid_request(healthy, adapter_root / "epsilon"), expected)


def test_full_restart_keeps_runtime_adapter_changes(healthy, adapter_root, tmp_path):
    """Registered, updated and removed adapters survive a full restart (the registry file); one whose
    files vanished is skipped with a log line, not fatal. Restarted with no --host, which checks the
    java host's own default bind address too."""
    live, url = healthy, healthy.url
    doomed = shutil.copytree(adapter_root / "gamma", adapter_root / f"doomed-{tmp_path.name}")
    register(live, "rt-gamma", adapter_root / "gamma")
    register(live, "rt-delta", adapter_root / "delta")
    requests.post(
        f"{live.adapters_url}/rt-delta/update", params={"src": str(adapter_root / "epsilon")}, timeout=HANG_SECONDS
    ).raise_for_status()
    register(live, "rt-doomed", doomed)
    register(live, "rt-gone", adapter_root / "delta")
    unregister(live, "rt-gone")
    unregister(live, "beta")  # from the model dir's adapters/: must stay removed
    before = listed(live)
    expected = {a: generate(url, "restart?", a) for a in ("rt-gamma", "rt-delta", "alpha")}
    registry = json.loads((live.model_dir / ".loraship" / "adapters.json").read_text())
    assert [a["name"] for a in registry["adapters"]] == ["alpha", "rt-gamma", "rt-delta", "rt-doomed"]
    assert registry["removed"] == ["beta"]
    shutil.rmtree(doomed)

    live.restart(default_host=True)
    url = live.url
    assert listening_addresses(int(url.rsplit(":", 1)[1])) in ({"127.0.0.1"}, {"::ffff:127.0.0.1"})
    assert f"Listening on http://127.0.0.1:{url.rsplit(':', 1)[1]}" in live.log_text()
    after = listed(live)
    assert after == {k: v for k, v in before.items() if k != "rt-doomed"}
    assert after["rt-delta"].endswith("epsilon")
    assert {a: generate(url, "restart?", a) for a in expected} == expected
    assert requests.post(url + "/invocations", json={"inputs": "x", "adapters": "beta"}, timeout=30).status_code == 404
    assert "Adapter rt-doomed from the registry could not be restored" in live.log_text()
    FIGURES.add("full restarts survived")
    FIGURES.add("runtime adapters restored after a full restart", len(expected) - 1)

    # Back to the suite's starting state (alpha and beta), which the registry then records.
    for name in ("rt-gamma", "rt-delta"):
        unregister(live, name)
    register(live, "beta", live.model_dir / "adapters" / "beta")
    assert json.loads((live.model_dir / ".loraship" / "adapters.json").read_text())["removed"] == []


def test_unreadable_registry_is_logged_and_ignored(healthy):
    """A corrupt registry file does not stop the server: the model dir's adapters still load."""
    live = healthy
    path = live.model_dir / ".loraship" / "adapters.json"
    saved = path.read_bytes() if path.exists() else None
    path.parent.mkdir(exist_ok=True)
    path.write_text("{not json")
    try:
        live.restart()
        assert "Adapter registry" in live.log_text() and "is unreadable, ignoring it" in live.log_text()
        assert set(listed(live)) == {"alpha", "beta"}
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)
