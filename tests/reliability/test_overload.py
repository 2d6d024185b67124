"""Overload: more concurrent requests than the job queue holds, and requests over predict_timeout.
The excess is refused with 503 at once, accepted requests complete, nothing needs a restart."""

import threading
import time

import pytest
from rel_support import (
    FIGURES,
    HANG_SECONDS,
    JOB_QUEUE_SIZE,
    PREDICT_TIMEOUT,
    Hold,
    generate,
    invoke,
    is_json_error,
    percentile,
    send,
    wait_healthy,
    worker_pids,
)

pytestmark = pytest.mark.server


def queue_length(live) -> int:
    """requestInQueue of GET /models/{m} (DJL's DescribeWorkflowResponse: a list of workflows)."""
    return send(live.url, "GET", f"/models/{live.model_name}").json()[0]["models"][0]["requestInQueue"]


def wave(live, n: int, hold_seconds: float = 4) -> dict:
    """Hold the worker with one slow request, then send ``n`` requests at once."""
    url = live.url
    hold = Hold(url, live.model_dir, hold_seconds)
    replies, done = [None] * n, [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        replies[i] = invoke(
            url,
            {
                "inputs": f"request {i}?",
                "adapters": ["alpha", "beta", "__base__"][i % 3],
                "parameters": {"max_new_tokens": 4},
            },
        )
        done[i] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_SECONDS * 2)
    return {"replies": replies, "done": done, "slow": hold.join(), "slow_done": hold.done}


def check_wave(result, n):
    replies, slow = result["replies"], result["slow"]
    assert all(r is not None for r in replies), "a request got no reply"
    accepted = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 503]
    assert len(accepted) + len(refused) == n, sorted({r.status for r in replies})
    for r in accepted:
        assert isinstance(r.json()["generated_text"], str)
    for r in refused:
        assert is_json_error(r) and "job_queue_size" in r.json()["message"], r.text
    # Refusals come back while the worker still holds the slow request: none of them waited for it.
    assert slow.status == 200
    assert refused
    assert all(t < result["slow_done"] for r, t in zip(replies, result["done"]) if r.status == 503)
    assert len(accepted) >= JOB_QUEUE_SIZE
    return accepted, refused


def record(accepted, refused):
    FIGURES.add("overload: requests accepted", len(accepted))
    FIGURES.add("overload: requests refused (503)", len(refused))
    lat = FIGURES.values.setdefault("_overload_latencies", [])
    lat.extend(r.seconds for r in accepted)
    FIGURES.set("overload: p99 of accepted (s)", round(percentile(lat, 99), 3))
    FIGURES.set(
        "overload: slowest refusal (s)",
        round(max([FIGURES.values.get("overload: slowest refusal (s)", 0)] + [r.seconds for r in refused]), 3),
    )


def test_excess_is_refused_quickly_and_the_server_recovers_without_restart(healthy):
    pid = worker_pids(healthy.pid)
    expected = generate(healthy.url, "after the storm?", "beta")
    n = JOB_QUEUE_SIZE * 3
    accepted, refused = check_wave(wave(healthy, n), n)
    record(accepted, refused)
    # Recovered: the same worker process, an empty queue, and every request served again.
    assert worker_pids(healthy.pid) == pid
    assert queue_length(healthy) == 0
    assert [generate(healthy.url, "after the storm?", "beta") for _ in range(3)] == [expected] * 3


def test_request_over_predict_timeout_fails_clearly_and_does_not_poison_the_worker(healthy):
    url = healthy.url
    expected = {a: generate(url, "steady?", a) for a in ("alpha", "beta", "")}
    pid = worker_pids(healthy.pid)
    queued = {}
    slow = Hold(url, healthy.model_dir, PREDICT_TIMEOUT + 30)
    # A request queued behind the one that times out waits for the restarted worker and is served.
    behind = threading.Thread(
        target=lambda: queued.setdefault(
            "behind", invoke(url, {"inputs": "steady?", "adapters": "beta", "parameters": {"max_new_tokens": 4}})
        )
    )
    behind.start()
    r = slow.join()
    behind.join(HANG_SECONDS * 3)
    assert queued["behind"].status == 200, queued["behind"].text
    assert queued["behind"].json()["generated_text"] == expected["beta"]
    assert r.status == 503 and r.json()["type"] == "PredictTimeoutException", r.text
    assert f"predict_timeout ({PREDICT_TIMEOUT} s)" in r.json()["message"]
    assert r.seconds < PREDICT_TIMEOUT + 30, "the worker was not stopped at predict_timeout"
    wait_healthy(url)
    assert worker_pids(healthy.pid) != pid, "DJL did not replace the timed-out worker"
    FIGURES.add("worker restarts survived")
    FIGURES.add("requests over predict_timeout answered 503")
    assert {a: generate(url, "steady?", a) for a in expected} == expected


@pytest.mark.soak
def test_soak_overload_waves(healthy):
    pid = worker_pids(healthy.pid)
    for _ in range(10):
        n = JOB_QUEUE_SIZE * 8
        accepted, refused = check_wave(wave(healthy, n, hold_seconds=3), n)
        record(accepted, refused)
    assert worker_pids(healthy.pid) == pid
    generate(healthy.url, "still here?", "alpha")
