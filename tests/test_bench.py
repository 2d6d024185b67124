"""``loraship bench`` against a fake LMI endpoint whose delays are known, so the figures can be checked.

Timing checks are bounds that cannot flake: the fake server sleeps at least the delay it is told,
so a measured latency is never below it (a hard lower bound); upper bounds leave a second or more
of slack for a busy machine. Exact relations (tokens/s = requests/s x tokens, goodput = share x
requests/s, status counts) are checked exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from loraship.cli import main
from loraship.runtime import free_port

SLACK = 1.5  # seconds a busy 2-core machine may add to a request, for upper bounds only


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the listen backlog: an open loop's bursts must not be refused by the fake itself


class FakeLMI:
    """An LMI-like endpoint on 127.0.0.1 in a thread; the prompt says how to answer.

    A prompt's ``key=value`` words say how to answer (other words are ignored; ``defaults``, the same words, hold
    for every prompt): ``delay`` (s before a non-streamed reply), ``tokens`` (generated_tokens reported;
    ``asked``: the request's max_new_tokens), ``prompt_tokens=words`` (its words reported as its prompt tokens),
    ``ttft`` / ``itl`` (s before the first token line / between lines when streaming, one line per token),
    ``status=500`` (HTTP 500), ``inbody=400`` (HTTP 200 carrying ``{"error", "code": 400}``, as static batching
    answers), ``cut=N`` (stream N token lines, then drop the connection). ``adapter_delay`` adds seconds per
    adapter, ``cold`` adds seconds to each adapter's first request, and after ``die_after`` requests every
    request is dropped unanswered and the listener closes (a dead server). ``bodies`` keeps every request body.

    ``metrics``: None answers /server/metrics with 404, ``"off"`` with DJL's 400, ``"on"`` with Prometheus text
    holding what loraship's handler would report for each answered request (``queue`` seconds slept before
    ``delay``), recorded ``metrics_lag`` seconds after its reply, as the worker's lines arrive after it.
    """

    def __init__(
        self,
        adapter_delay: dict | None = None,
        cold: float = 0.0,
        die_after: int | None = None,
        metrics: str | None = None,
        metrics_lag: float = 0.0,
        defaults: str = "",
    ):
        self.defaults = dict(word.split("=", 1) for word in defaults.split())
        self.bodies: list[dict] = []
        self.adapter_delay = adapter_delay or {}
        self.cold = cold
        self.die_after = die_after
        self.metrics, self.metrics_lag = metrics, metrics_lag
        self.registry = self._registry() if metrics == "on" else None
        self.seen_adapters: set[str] = set()
        self.count = 0
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.dead = False

    def close(self):
        if not self.dead:
            self.dead = True
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self):
        return self

    def _registry(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        reg = CollectorRegistry()
        self.prom = {
            "ok": Counter("LorashipRequests_200", "", ["Adapter"], registry=reg),
            "tokens": Counter("LorashipOutputTokens", "", ["Adapter"], registry=reg),
            "queue": Histogram("LorashipQueueSeconds", "", ["Adapter"], registry=reg),
            "inference": Histogram("LorashipInferenceSeconds", "", ["Adapter"], registry=reg),
            "djl_queue": Histogram("QueueTime", "", ["Model"], registry=reg),
        }
        return reg

    def record(self, adapter: str, queue: float, delay: float, tokens: int) -> None:
        def later():
            time.sleep(self.metrics_lag)
            self.prom["ok"].labels(adapter).inc()
            self.prom["tokens"].labels(adapter).inc(tokens)
            self.prom["queue"].labels(adapter).observe(queue)
            self.prom["inference"].labels(adapter).observe(delay)
            self.prom["djl_queue"].labels("fake").observe(0)

        threading.Thread(target=later, daemon=True).start()

    def __exit__(self, *exc):
        self.close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                # DJL Serving's shapes (ListModelsResponse, DescribeWorkflowResponse, ListAdaptersResponse).
                if self.path == "/ping":
                    self._json(200, {"fake": {"status": "Healthy"}})
                elif self.path == "/models":
                    self._json(
                        200, {"models": [{"modelName": "fake", "modelUrl": "file:/nowhere/fake/", "status": "READY"}]}
                    )
                elif self.path == "/models/fake":
                    self._json(
                        200,
                        [
                            {
                                "workflowName": "fake",
                                "models": [
                                    {
                                        "modelName": "fake",
                                        "modelUrl": "file:/nowhere/fake/",
                                        "batchSize": 1,
                                        "maxBatchDelayMillis": 100,
                                        "maxIdleSeconds": 60,
                                        "queueSize": 1000,
                                        "requestInQueue": 0,
                                        "status": "Healthy",
                                        "loadedAtStartup": True,
                                        "workerGroups": [
                                            {
                                                "device": {"deviceType": "cpu", "deviceId": -1},
                                                "minWorkers": 1,
                                                "maxWorkers": 1,
                                                "workers": [
                                                    {
                                                        "id": 1,
                                                        "startTime": "2026-01-01T00:00:00.000Z",
                                                        "status": "READY",
                                                    }
                                                ],
                                            }
                                        ],
                                    }
                                ],
                            }
                        ],
                    )
                elif self.path == "/server/metrics" and fake.metrics == "off":
                    self._json(
                        400, {"code": 400, "type": "BadRequestException", "message": "Prometheus is not enabled"}
                    )
                elif self.path == "/server/metrics" and fake.metrics == "on":
                    from prometheus_client import generate_latest

                    data = generate_latest(fake.registry)
                    self.send_response(200)
                    self.send_header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif self.path == "/models/fake/adapters":
                    self._json(
                        200,
                        {
                            "adapters": [
                                {"name": n, "src": f"/nowhere/{n}", "preload": True, "pin": False}
                                for n in sorted(fake.adapter_delay)
                            ]
                        },
                    )
                else:
                    self._json(404, {"code": 404, "type": "ResourceNotFoundException", "error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with fake.lock:
                    fake.count += 1
                    n = fake.count
                    adapter = body.get("adapters", "__base__")
                    first = adapter not in fake.seen_adapters
                    fake.seen_adapters.add(adapter)
                if fake.die_after is not None and n > fake.die_after:
                    self.close_connection = True
                    threading.Thread(target=fake.close, daemon=True).start()
                    return
                with fake.lock:
                    fake.bodies.append(body)
                words = body["inputs"].split()
                spec = {**fake.defaults, **dict(w.split("=", 1) for w in words if "=" in w)}
                extra = fake.adapter_delay.get(adapter, 0.0) + (fake.cold if first else 0.0)
                asked = body["parameters"]["max_new_tokens"]
                tokens = asked if spec.get("tokens") == "asked" else int(spec.get("tokens", 4))
                details = {
                    "generated_tokens": tokens,
                    "prompt_tokens": len(words) if spec.get("prompt_tokens") == "words" else 7,
                    "finish_reason": "length",
                    "adapter": adapter,
                    "inference_seconds": 0.0,
                }
                if "status" in spec:
                    self._json(int(spec["status"]), {"error": "boom", "code": int(spec["status"]), "type": "X"})
                elif "inbody" in spec:
                    self._json(200, {"error": "bad input in a batch", "code": int(spec["inbody"])})
                elif body.get("stream"):
                    self._stream(spec, tokens, extra, details)
                else:
                    queue = float(spec.get("queue", 0))
                    time.sleep(queue + float(spec.get("delay", 0)) + extra)
                    self._json(200, {"generated_text": "x" * tokens, "details": details})
                    if fake.registry is not None:
                        fake.record(adapter, queue, float(spec.get("delay", 0)) + extra, tokens)

            def _chunk(self, obj):
                data = (json.dumps(obj) + "\n").encode()
                self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self, spec, tokens, extra, details):
                self.send_response(200)
                self.send_header("content-type", "application/jsonlines")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                time.sleep(float(spec.get("ttft", 0)) + extra)
                lines = int(spec.get("cut", tokens))
                for i in range(lines):
                    if i:
                        time.sleep(float(spec.get("itl", 0)))
                    self._chunk({"token": {"text": "x"}})
                if "cut" in spec:
                    self.close_connection = True
                    return
                self._chunk({"generated_text": "x" * tokens, "details": details})
                self.wfile.write(b"0\r\n\r\n")

        return Handler


def dataset(tmp_path: Path, prompts: list[str]) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"instruction": p, "response": "-"}) + "\n" for p in prompts))
    return str(path)


def bench(url: str, out: Path, *extra: str) -> tuple[int, dict, list[dict]]:
    code = main(["bench", "--url", url, "--out", str(out), "--warmup", "0", "--no-cold-probe", *extra])
    result = json.loads((out / "bench.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    return code, result, records


def level(result: dict, label: str) -> dict:
    return next(lv for lv in result["levels"] if lv["label"] == label)


def test_mixed_output_lengths_are_drawn_per_request_and_recorded(tmp_path):
    with FakeLMI() as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["delay=0.01 tokens=asked"]),
            "--rate",
            "200",
            "--requests",
            "60",
            "--max-new-tokens",
            "16,32,64,128",
            "--seed",
            "4",
        )
    assert code == 0
    assert result["config"]["max_new_tokens"] == [16, 32, 64, 128]
    measured = [r for r in records if r["phase"] == "measure"]
    asked = Counter(r["max_new_tokens"] for r in measured)
    assert set(asked) == {16, 32, 64, 128} and sum(asked.values()) == 60
    assert all(r["output_tokens"] == r["max_new_tokens"] for r in measured)  # each asked for its own length
    assert level(result, "rate=200")["output_tokens"] == sum(r["max_new_tokens"] for r in measured)
    assert "max_new_tokens = min_new_tokens = one of 16, 32, 64, 128" in (tmp_path / "out" / "summary.md").read_text()


def test_closed_loop_percentiles_and_throughput_match_known_delays(tmp_path):
    delays = [0.05, 0.10, 0.15, 0.20]
    with FakeLMI() as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, [f"delay={d} tokens=5" for d in delays]),
            "--concurrency",
            "1,4",
            "--requests",
            "8",
        )
    assert code == 0
    true = np.array(delays * 2)  # 8 requests cycle the 4 prompts twice
    for label, concurrency in (("concurrency=1", 1), ("concurrency=4", 4)):
        lv = level(result, label)
        assert (lv["requests"], lv["ok"], lv["errors"], lv["error_rate"]) == (8, 8, 0, 0.0)
        assert lv["status_counts"] == {"200": 8}
        e2e = lv["latency"]["e2e_s"]
        for q in (50, 90, 95, 99):
            assert np.percentile(true, q) <= e2e[f"p{q}"] <= np.percentile(true, q) + SLACK
        assert true.mean() <= e2e["mean"] <= true.mean() + SLACK
        # Every request takes at least its delay, and at most `concurrency` run at once.
        assert lv["wall_s"] >= true.sum() / concurrency
        assert lv["requests_per_s"] <= 8 / (true.sum() / concurrency)
        assert lv["requests_per_s"] >= 8 / (true.sum() / concurrency + 4 * SLACK)
        assert lv["output_tokens_per_s"] == pytest.approx(lv["requests_per_s"] * 5)
        assert lv["requests_per_s"] == pytest.approx(8 / lv["wall_s"])
        assert lv["latency"]["ttft_s"]["n"] == 0  # not streaming: no TTFT is made up
    assert len(records) == 16 and {r["phase"] for r in records} == {"measure"}
    out = tmp_path / "out"
    for name in ("summary.md", "throughput.png", "latency.png", "e2e_cdf.png"):
        assert (out / name).stat().st_size > 0
    assert result["files"]["plots"] == ["throughput.png", "latency.png", "e2e_cdf.png"]
    assert result["server"]["metrics"] == {
        "available": False,
        "status": 404,
        "body": {"code": 404, "type": "ResourceNotFoundException", "error": "not found"},
    }
    assert result["server"]["model"]["body"][0]["models"][0]["modelName"] == "fake"
    assert result["server"]["model_summary"] == {
        "modelName": "fake",
        "status": "Healthy",
        "batchSize": 1,
        "maxBatchDelayMillis": 100,
        "workers": 1,
        "adapters": [],
        "modelDir": "/nowhere/fake/",
    }
    assert result["server"]["serving_properties"] is None  # /nowhere/fake/ has none
    assert result["command"][:2] == ["loraship", "bench"] and "--concurrency" in result["command"]
    assert result["versions"]["loraship"] and result["machine"]["cpu_count"]
    summary = (out / "summary.md").read_text()
    assert "concurrency=4" in summary and "/server/metrics unavailable (HTTP 404)" in summary
    assert "model `fake` (batch_size 1, max_batch_delay 100 ms, 1 worker(s), adapters none)" in summary


def test_streaming_measures_ttft_tpot_and_itl_from_chunk_arrivals(tmp_path):
    with FakeLMI() as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["ttft=0.15 itl=0.05 tokens=5"]),
            "--stream",
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--slo",
            "ttft=10000,tpot=10000",
        )
    assert code == 0
    lv = level(result, "concurrency=2")
    assert lv["ok"] == 4
    lat = lv["latency"]
    assert 0.15 <= lat["ttft_s"]["p50"] <= 0.15 + SLACK
    assert 0.15 + 4 * 0.05 <= lat["e2e_s"]["p50"] <= 0.35 + SLACK
    assert lat["itl_s"]["n"] == 4 * 4  # 5 token lines: 4 gaps per request
    assert 0 < lat["itl_s"]["p50"] <= 0.05 + SLACK
    assert 0 < lat["tpot_s"]["p50"] <= 0.05 + SLACK
    for r in records:
        assert r["chunks"] == 5 and r["output_tokens"] == 5 and r["input_tokens"] == 7
        assert r["tpot"] == pytest.approx((r["e2e"] - r["ttft"]) / 4)
        assert sum(r["itl"]) <= r["e2e"] - r["ttft"] + 1e-9
    assert lv["goodput"]["fraction"] == 1.0 and lv["goodput"]["good"] == 4
    assert (tmp_path / "out" / "ttft_cdf.png").stat().st_size > 0


def test_errors_are_counted_by_status_and_kept_out_of_latencies(tmp_path):
    prompts = ["delay=0.01", "status=500", "inbody=400", "delay=0.01"]
    with FakeLMI() as fake:
        code, result, records = bench(
            fake.url, tmp_path / "out", "--dataset", dataset(tmp_path, prompts), "--concurrency", "2", "--requests", "8"
        )
    assert code == 0
    lv = level(result, "concurrency=2")
    assert lv["status_counts"] == {"200": 4, "400": 2, "500": 2}
    assert (lv["ok"], lv["errors"], lv["error_rate"]) == (4, 4, 0.5)
    assert lv["latency"]["e2e_s"]["n"] == 4
    assert lv["requests_per_s"] == pytest.approx(4 / lv["wall_s"])
    assert lv["error_examples"] == {"400": "bad input in a batch", "500": "boom"}
    in_body = [r for r in records if r["status"] == 400]
    assert len(in_body) == 2 and all(r["http_status"] == 200 and not r["ok"] for r in in_body)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| concurrency=2 | 400 | 2 | bad input in a batch |" in summary
    assert "| concurrency=2 | 500 | 2 | boom |" in summary


def test_goodput_counts_requests_within_the_slo(tmp_path):
    with FakeLMI() as fake:
        code, result, _ = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["delay=0.01", "delay=0.7"]),
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--slo",
            "e2e=400",
        )
    lv = level(result, "concurrency=2")
    good = lv["goodput"]
    assert good["slo_ms"] == {"e2e": 400.0}
    assert (good["good"], good["fraction"]) == (2, 0.5)  # the 0.7 s requests can never meet 400 ms
    assert good["requests_per_s"] == pytest.approx(lv["requests_per_s"] * 0.5)
    assert "e2e <= 400 ms" in (tmp_path / "out" / "summary.md").read_text()


def test_per_adapter_breakdown_cost_over_base_and_cold_probe(tmp_path):
    with FakeLMI(adapter_delay={"__base__": 0.0, "slow": 0.4}, cold=0.5) as fake:
        code = main(
            [
                "bench",
                "--url",
                fake.url,
                "--out",
                str(tmp_path / "out"),
                "--dataset",
                dataset(tmp_path, ["delay=0.01"]),
                "--adapters",
                "__base__,slow",
                "--concurrency",
                "1",
                "--requests",
                "4",
                "--warmup",
                "1",
            ]
        )
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "out" / "requests.jsonl").read_text().splitlines()]
    assert code == 0
    assert [r["phase"] for r in records] == ["probe"] * 6 + ["warmup"] + ["measure"] * 4
    lv = level(result, "concurrency=1")
    base, slow = lv["adapters"]["__base__"], lv["adapters"]["slow"]
    assert (base["requests"], slow["requests"]) == (2, 2)  # round-robin
    assert slow["latency"]["e2e_s"]["p50"] >= 0.41
    assert base["output_tokens_per_s"] + slow["output_tokens_per_s"] == pytest.approx(lv["output_tokens_per_s"])
    cost = lv["adapter_cost"]["slow"]
    assert cost["e2e_p50_ratio"] == pytest.approx(slow["latency"]["e2e_s"]["p50"] / base["latency"]["e2e_s"]["p50"])
    assert cost["e2e_p50_ratio"] > 1
    cw = result["cold_warm"]
    assert cw["__base__"]["metric"] == "e2e" and cw["__base__"]["warm_samples"] == 2
    assert cw["__base__"]["cold_s"] >= 0.51 and cw["slow"]["cold_s"] >= 0.91 and cw["slow"]["warm_s"] >= 0.41
    assert cw["__base__"]["cold_over_warm"] == pytest.approx(cw["__base__"]["cold_s"] / cw["__base__"]["warm_s"])
    assert "## Cold vs warm" in (tmp_path / "out" / "summary.md").read_text()


def test_open_loop_poisson_is_seeded_and_bounded(tmp_path):
    runs = []
    with FakeLMI() as fake:
        for name in ("a", "b"):
            code, result, records = bench(
                fake.url,
                tmp_path / name,
                "--dataset",
                dataset(tmp_path, ["delay=0.01", "delay=0.02"]),
                "--rate",
                "40,80",
                "--requests",
                "12",
                "--adapters",
                "x,y,z",
                "--mix",
                "uniform",
            )
            assert code == 0
            runs.append([(r["level"], r["adapter"]) for r in records])
        _, timed, _ = bench(
            fake.url,
            tmp_path / "timed",
            "--rate",
            "20",
            "--duration",
            "0.5",
            "--dataset",
            dataset(tmp_path, ["delay=0.01"]),
        )
    assert [lv["label"] for lv in result["levels"]] == ["rate=40", "rate=80"]
    assert all(lv["requests"] == 12 and lv["ok"] == 12 for lv in result["levels"])
    assert runs[0] == runs[1]  # same seed, same adapter draws
    assert len({a for _, a in runs[0]}) > 1
    # A duration bound stops sending: 0.5 s at 20/s cannot send hundreds.
    assert 1 <= timed["levels"][0]["requests"] < 100 and timed["levels"][0]["errors"] == 0
    assert (tmp_path / "a" / "throughput.png").is_file()


def test_bad_url_is_reported_as_connection_errors(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, result, records = bench(url, tmp_path / "out", "--concurrency", "1", "--requests", "3")
    assert code == 1
    assert result["server"]["reachable"] is False
    lv = level(result, "concurrency=1")
    assert lv["status_counts"] == {"connection_error": 3} and lv["error_rate"] == 1.0
    assert lv["requests_per_s"] == 0.0 and lv["latency"]["e2e_s"]["mean"] is None
    assert all(r["status"] == "connection_error" and r["error"] for r in records)
    assert "did not answer /ping" in (tmp_path / "out" / "summary.md").read_text()


def test_server_that_dies_mid_run_is_reported(tmp_path):
    with FakeLMI(die_after=3) as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["delay=0.01"]),
            "--concurrency",
            "1",
            "--requests",
            "6",
        )
    assert code == 0
    lv = level(result, "concurrency=1")
    assert lv["ok"] == 3 and lv["status_counts"] == {"200": 3, "connection_error": 3}
    assert result["server_after"]["ping"]["status"] is None
    assert "After the run /ping gave" in (tmp_path / "out" / "summary.md").read_text()


def test_a_stream_cut_short_is_incomplete(tmp_path):
    with FakeLMI() as fake:
        _, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["cut=2 itl=0.01"]),
            "--stream",
            "--concurrency",
            "1",
            "--requests",
            "2",
        )
    lv = level(result, "concurrency=1")
    assert lv["status_counts"] == {"incomplete": 2} and lv["ok"] == 0
    assert all(r["chunks"] == 2 for r in records)


def test_compare_prints_ratios_of_two_runs_and_of_two_levels(tmp_path, capsys):
    with FakeLMI() as fake:
        for name, tokens in (("a", 4), ("b", 8)):
            bench(
                fake.url,
                tmp_path / name,
                "--dataset",
                dataset(tmp_path, [f"delay=0.01 tokens={tokens}"]),
                "--concurrency",
                "1,2",
                "--requests",
                "4",
            )
    capsys.readouterr()
    assert main(["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b" / "bench.json")]) == 0
    text = capsys.readouterr().out
    a = json.loads((tmp_path / "a" / "bench.json").read_text())
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert "A concurrency=1 vs B concurrency=1" in text and "A concurrency=2 vs B concurrency=2" in text
    ratio = b["levels"][0]["output_tokens_per_s"] / a["levels"][0]["output_tokens_per_s"]
    row = next(line for line in text.splitlines() if line.strip().startswith("output tokens/s"))
    assert math.isclose(float(row.split()[-1]), ratio, rel_tol=0.01)
    assert main(["bench", "compare", str(tmp_path / "a"), str(tmp_path / "a"), "--a-level", "1", "--b-level", "2"]) == 0
    assert "A concurrency=1 vs B concurrency=2" in capsys.readouterr().out
    assert main(["bench", "compare", str(tmp_path / "a"), str(tmp_path / "a"), "--a-level", "16"]) == 2
    assert "has no level '16'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "1"], "give --requests, --duration or both"),
        (["--requests", "2"], "give exactly one of --concurrency and --rate"),
        (["--concurrency", "0", "--requests", "2"], "--concurrency values must be >= 1"),
        (["--concurrency", "1", "--requests", "2", "--slo", "ttft=100"], "need --stream"),
        (["--concurrency", "1", "--requests", "2", "--slo", "foo=1"], "not foo"),
        (
            ["--concurrency", "1", "--requests", "2", "--mix", "uniform", "--dataset", "/nonexistent.jsonl"],
            "does not exist",
        ),
    ],
)
def test_invalid_options_fail_before_sending(tmp_path, capsys, argv, message):
    assert main(["bench", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_stops_cleanly_and_writes_what_was_measured(tmp_path):
    with FakeLMI() as fake:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loraship.cli",
                "bench",
                "--url",
                fake.url,
                "--out",
                str(tmp_path / "out"),
                "--dataset",
                dataset(tmp_path, ["delay=0.05"]),
                "--concurrency",
                "2,4",
                "--requests",
                "100000",
                "--warmup",
                "0",
                "--no-cold-probe",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 120
            while fake.count < 6 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=300)  # writing plots is slow on a loaded 2-core machine
        finally:
            proc.kill()
    assert proc.returncode == 130, out
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert result["interrupted"] is True
    assert [lv["label"] for lv in result["levels"]] == ["concurrency=2"]  # the next level never started
    lv = result["levels"][0]
    assert lv["interrupted"] and lv["ok"] >= 4 and lv["errors"] == 0
    assert (tmp_path / "out" / "summary.md").is_file() and (tmp_path / "out" / "throughput.png").is_file()


def test_each_level_records_the_servers_metrics_and_splits_latency_into_queue_and_inference(tmp_path, capsys):
    """The fake reports each request's queue and inference seconds 0.3 s after its reply; each level's
    snapshot difference must hold exactly its own requests, and the split the known sleeps."""
    with FakeLMI(metrics="on", metrics_lag=0.3) as fake:
        code, result, _ = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            dataset(tmp_path, ["queue=0.05 delay=0.1 tokens=5"]),
            "--adapters",
            "alpha,__base__",
            "--concurrency",
            "1,2",
            "--requests",
            "6",
        )
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("concurrency=1", "concurrency=2"):
        lv = level(result, label)
        m = lv["server_metrics"]
        assert m["available"] and m["status"] == 200
        assert m["counters"]["LorashipRequests_200"] == {"Adapter=__base__": 3.0, "Adapter=alpha": 3.0}
        assert m["counters"]["LorashipOutputTokens"] == {"Adapter=__base__": 15.0, "Adapter=alpha": 15.0}
        assert m["histograms"]["LorashipQueueSeconds"]["Adapter=alpha"] == {"count": 3.0, "sum": pytest.approx(0.15)}
        split = lv["latency_split"]
        assert split["rows"] == 6 and split["source"] == "/server/metrics"
        assert split["queue_s"] == pytest.approx(0.05) and split["inference_s"] == pytest.approx(0.1)
        assert split["server_queue_s"] == 0.0
        # The client's E2E holds both sleeps: what the server's figures leave over is never negative.
        assert split["e2e_mean_s"] == pytest.approx(lv["latency"]["e2e_s"]["mean"])
        assert 0 <= split["other_s"] < SLACK
        assert set(split["adapters"]) == {"alpha", "__base__"}
        assert split["adapters"]["alpha"]["output_tokens"] == 15.0
        assert f"{label}: 6/6 ok" in printed
    assert "server: queue 0.050s, inference 0.100s, DJL queue 0.000s" in printed
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## Server-side latency: queue and inference" in summary
    assert "| concurrency=2 | alpha | 3 | 0.0 | 50.0 | n/a | " in summary  # rows, DJL queue, queue, TTFT (ms)


def test_a_server_without_metrics_is_recorded_and_the_run_goes_on(tmp_path):
    with FakeLMI(metrics="off") as fake:
        code, result, _ = bench(
            fake.url, tmp_path / "out", "--dataset", dataset(tmp_path, ["delay=0.01"]), "--concurrency", "1",
            "--requests", "2",
        )  # fmt: skip
    assert code == 0
    lv = level(result, "concurrency=1")
    assert lv["ok"] == 2
    assert lv["server_metrics"]["available"] is False and lv["server_metrics"]["status"] == 400
    assert lv["latency_split"] is None
    assert "No split: /server/metrics unavailable (HTTP 400" in (tmp_path / "out" / "summary.md").read_text()
