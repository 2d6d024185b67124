"""The handler's ``[METRICS]`` lines: the exact form DJL's ``Metric.parse`` accepts, and figures that match the
replies, in static and continuous batching (in-process; both servers scrape them in
tests/conformance/test_server_metrics.py)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import defaultdict

import pytest
from harness import batch_input, init_input, read_output, request_input
from tiny_models import save_random_adapter

from loraship.handler import metrics as m

# ai.djl.metric.Metric's pattern (djl api 0.34.0 and 0.36.0, read from the jar's constant pool); parse() uses
# matches(), so the whole text after the marker must match.
DJL_METRIC = re.compile(r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)(?>\|#([^|]*))?(?>\|(\d+))?(?>\|([cgh]))?")
# ai.djl.metric.Unit's values; those with "/" can never match the pattern's unit group.
DJL_UNITS = {
    "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits", "Kilobits",
    "Megabits", "Gigabits", "Terabits", "Percent", "Count", "None",
}  # fmt: skip


def djl_parse(line: str) -> dict:
    """A line as DJL reads it (after the marker), checked as its Prometheus appender would need it."""
    match = DJL_METRIC.fullmatch(line)
    assert match, f"DJL would drop {line!r}"
    name, unit, value, dims, _, kind = match.groups()
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name  # a valid Prometheus name
    assert unit in DJL_UNITS, unit
    pairs = [d.split(":") for d in dims.split(",")]
    assert len(pairs) == 1 and len(pairs[0]) == 2, f"one dimension, one ':' ({dims!r})"
    label, adapter = pairs[0]
    assert label == "Adapter" and adapter
    number = float(value.replace(",", ""))
    if unit == "Count" and kind == "c":
        assert number >= 0, "a counter increment must not be negative"
    return {"name": name, "unit": unit, "value": number, "adapter": adapter, "kind": kind}


class Lines:
    """Collects what a Metrics writes; ``sums``/``counts`` per (name, adapter)."""

    def __init__(self):
        self.raw: list[str] = []

    def __call__(self, lines):
        self.raw.extend(lines)

    def parsed(self) -> list[dict]:
        return [djl_parse(line) for line in self.raw]

    def sums(self) -> dict:
        out = defaultdict(float)
        for p in self.parsed():
            out[(p["name"], p["adapter"])] += p["value"]
        return dict(out)

    def counts(self) -> dict:
        out = defaultdict(int)
        for p in self.parsed():
            out[(p["name"], p["adapter"])] += 1
        return dict(out)

    def clear(self):
        self.raw.clear()


# -- the line format --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [(0, "0"), (7, "7"), (0.25, "0.25"), (1e-7, "0"), (-1e-9, "0"), (1e16, "10000000000000000"), (2.5e-6, "0.000003")],
)
def test_values_are_fixed_point_so_djl_can_parse_them(value, text):
    assert m.format_value(value) == text
    assert djl_parse(m.format_line("X", "None", value, "a", "h"))["value"] == pytest.approx(float(text))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3", None, True])
def test_values_djl_would_drop_are_refused(value):
    with pytest.raises(ValueError):
        m.format_value(value)


def test_one_adapter_label_whose_value_cannot_split_the_line():
    assert m.format_line(m.OUTPUT_TOKENS, "Count", 5, "", "c") == "LorashipOutputTokens.Count:5|#Adapter:__base__|c"
    line = m.format_line(m.QUEUE, "None", 0.5, "a,b:c|d #e", "h")
    assert djl_parse(line)["adapter"] == "a_b_c_d__e"
    assert m.request_label(["alpha", "alpha"]) == "alpha"
    assert m.request_label(["alpha", ""]) == m.MIXED
    with pytest.raises(ValueError):
        m.format_line("Bad-Name", "Count", 1, "a", "c")
    with pytest.raises(ValueError):
        m.format_line("Tput", "Count/Second", 1, "a", "g")  # DJL's regex cannot read a unit with "/"


def test_lines_reach_stdout_as_djl_worker_logging_writes_them():
    """DJL's worker: root logging to stdout as LEVEL::message, here at WARNING; the metrics still go out, every
    line of a record with the marker."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(levelname)s::%(message)s', level='WARNING')\n"
        "from loraship.handler.metrics import Metrics\n"
        "Metrics().adapter_loaded('alpha', 0.125)\n"
        "Metrics(enabled=False).refused(400)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines == [
        "INFO::[METRICS]LorashipAdapterLoadSeconds.None:0.125|#Adapter:alpha|h",
        "[METRICS]LorashipAdapterResident.Count:1|#Adapter:alpha|g",
    ]
    for line in lines:  # what PyProcess does: the text after the first marker
        djl_parse(line[line.index("[METRICS]") + 9 :])


# -- static batching ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static(tiny_neox, tmp_path_factory):
    """A static service with adapters alpha and beta, at most one of them in memory (so they reload)."""
    from loraship.handler.service import HandlerService

    root = tmp_path_factory.mktemp("metrics-adapters")
    for name, seed in (("alpha", 1), ("beta", 2)):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    svc = HandlerService()
    props = {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "adapter_roots": str(root), "max_adapters": "1"}
    svc.handle(init_input(props))
    lines = Lines()
    svc.metrics.write = lines
    for name in ("alpha", "beta"):
        svc.register(name, str(root / name))
    return svc, lines


def ask(svc, body):
    return read_output(svc.handle(request_input(body)))


def test_static_request_metrics_match_the_reply(static):
    svc, lines = static
    lines.clear()
    code, reply = ask(svc, {"inputs": "What is SageMaker?", "parameters": {"max_new_tokens": 6, "details": True}})
    assert code == 200
    sums, counts = lines.sums(), lines.counts()
    assert sums[("LorashipRequests_200", "__base__")] == 1
    assert sums[("LorashipOutputTokens", "__base__")] == reply["details"]["generated_tokens"]
    assert sums[("LorashipInferenceSeconds", "__base__")] == pytest.approx(
        reply["details"]["inference_seconds"], abs=1e-3
    )
    assert counts[("LorashipQueueSeconds", "__base__")] == 1
    assert ("LorashipTimeToFirstTokenSeconds", "__base__") not in counts  # generate() returns whole
    kinds = {p["name"]: (p["unit"], p["kind"]) for p in lines.parsed()}
    assert kinds["LorashipRequests_200"] == ("Count", "c")
    assert kinds["LorashipQueueSeconds"] == kinds["LorashipInferenceSeconds"] == ("None", "h")


def test_static_batch_counts_each_request_under_its_adapter_and_refusals_as_unknown(static):
    svc, lines = static
    lines.clear()
    bodies = [
        {"inputs": "a?", "adapters": "alpha", "parameters": {"max_new_tokens": 3, "details": True}},
        {"inputs": ["b?", "c?"], "adapters": ["beta", "beta"], "parameters": {"max_new_tokens": 4, "details": True}},
        {"inputs": "d?", "adapters": "nope"},
        {"inputs": ["e?", "f?"], "adapters": ["alpha", ""], "parameters": {"max_new_tokens": 2, "details": True}},
    ]
    replies = read_output(svc.handle(batch_input([request_input(b) for b in bodies])), batch_size=len(bodies))
    assert replies[2]["code"] == 404
    sums = lines.sums()
    assert sums[("LorashipRequests_200", "alpha")] == 1
    assert sums[("LorashipRequests_200", "beta")] == 1
    assert sums[("LorashipRequests_404", "__unknown__")] == 1
    assert sums[("LorashipRequests_200", "__mixed__")] == 1
    # Rows keep their own adapter: tokens per adapter are the sums of the replies' details.
    tokens = defaultdict(int)
    for body, reply in zip(bodies, replies):
        for adapter, item in zip(
            body["adapters"] if isinstance(body["adapters"], list) else [body["adapters"]],
            reply if isinstance(reply, list) else [reply],
        ):
            if "details" in item:
                tokens[adapter or "__base__"] += item["details"]["generated_tokens"]
    assert {a: sums[("LorashipOutputTokens", a)] for a in tokens} == tokens
    # max_adapters=1: alpha and beta took turns in memory, each (re)load timed, the resident gauge following.
    loads = [p for p in lines.parsed() if p["name"] == "LorashipAdapterLoadSeconds"]
    assert {p["adapter"] for p in loads} == {"alpha", "beta"} and all(p["value"] > 0 for p in loads)
    resident = [(p["adapter"], p["value"]) for p in lines.parsed() if p["name"] == "LorashipAdapterResident"]
    assert ("alpha", 0.0) in resident or ("beta", 0.0) in resident


def test_static_stream_reports_ttft_and_the_final_lines_tokens(static):
    svc, lines = static
    lines.clear()
    out = svc.handle(
        request_input({"inputs": "Hello?", "stream": True, "parameters": {"max_new_tokens": 5, "details": True}})
    )
    streamed = [json.loads(chunk) for chunk in out.stream_content]
    final = streamed[-1]
    sums, counts = lines.sums(), lines.counts()
    assert sums[("LorashipRequests_200", "__base__")] == 1
    assert sums[("LorashipOutputTokens", "__base__")] == final["details"]["generated_tokens"]
    assert counts[("LorashipTimeToFirstTokenSeconds", "__base__")] == 1
    assert sums[("LorashipTimeToFirstTokenSeconds", "__base__")] >= sums[("LorashipQueueSeconds", "__base__")]


def test_a_failing_metric_write_never_fails_the_request(static, caplog):
    svc, lines = static

    def broken(_):
        raise OSError("stdout is gone")

    svc.metrics.write = broken
    try:
        code, reply = ask(svc, {"inputs": "Still there?", "parameters": {"max_new_tokens": 3}})
        assert code == 200 and "generated_text" in reply
        code, _ = ask(svc, {"inputs": "x", "parameters": {"max_new_tokens": -1}})
        assert code == 400
    finally:
        svc.metrics.write = lines


def test_metrics_can_be_turned_off(tiny_neox):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    svc.handle(init_input({"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "metrics": "false"}))
    lines = Lines()
    svc.metrics.write = lines
    assert ask(svc, {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})[0] == 200
    assert svc.options.metrics is False and lines.raw == []


# -- continuous batching ----------------------------------------------------------------------------


def test_continuous_rows_report_queue_ttft_inference_and_tokens(tiny_neox, tmp_path):
    from djl_python.test_model import decode_encoded_output_binary

    from loraship.handler.async_service import AsyncHandlerService

    save_random_adapter(tiny_neox, tmp_path / "alpha", seed=1)
    svc = AsyncHandlerService()
    loop = asyncio.new_event_loop()
    try:
        init = {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "adapter_roots": str(tmp_path)}
        loop.run_until_complete(svc.handle(init_input(init)))
        lines = Lines()
        svc.core.metrics.write = lines
        svc.core.register("alpha", str(tmp_path / "alpha"))
        requests = [
            {"inputs": f"Question {i}?", "adapters": ["alpha", "__base__"][i % 2], "stream": i % 3 == 0,
             "parameters": {"max_new_tokens": 3 + i, "details": True}}
            for i in range(6)
        ] + [{"inputs": "x", "parameters": {"max_new_tokens": -1}}]  # fmt: skip

        async def one(body):
            out = await svc.handle(request_input(body))
            if hasattr(out, "__aiter__"):
                return [
                    json.loads(decode_encoded_output_binary(bytearray(c.content.value_at(0)))["data"])
                    async for c in out
                ]
            frame = decode_encoded_output_binary(bytearray(out.content.value_at(0)))
            return json.loads(frame["data"])

        async def run():
            return await asyncio.gather(*(one(b) for b in requests))

        replies = loop.run_until_complete(run())
    finally:
        svc.scheduler.close()
        loop.close()
    sums, counts = lines.sums(), lines.counts()
    tokens = defaultdict(int)
    for body, reply in zip(requests[:-1], replies):
        final = reply[-1] if isinstance(reply, list) else reply
        tokens[body["adapters"]] += final["details"]["generated_tokens"]
    assert sums[("LorashipRequests_200", "alpha")] == 3 and sums[("LorashipRequests_200", "__base__")] == 3
    assert sums[("LorashipRequests_400", "__unknown__")] == 1
    assert {a: sums[("LorashipOutputTokens", a)] for a in tokens} == tokens
    for name in ("LorashipQueueSeconds", "LorashipTimeToFirstTokenSeconds", "LorashipInferenceSeconds"):
        assert counts[(name, "alpha")] == counts[(name, "__base__")] == 3, name
    assert counts[("LorashipAdapterLoadSeconds", "alpha")] == 1
    # TTFT runs from the request's arrival, so it is never shorter than the wait for a slot.
    assert sums[("LorashipTimeToFirstTokenSeconds", "alpha")] >= sums[("LorashipQueueSeconds", "alpha")]
