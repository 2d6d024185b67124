"""The server's own figures per level: ``/server/metrics`` (Prometheus text, which DJL Serving and loraship's
host serve with ``SERVING_PROMETHEUS=true``) read before and after each level, their difference, and the
latency split it gives.

The split comes from the handler's metrics (README, Metrics): ``LorashipQueueSeconds`` (from the handler
receiving a request to its generation's start) and ``LorashipInferenceSeconds`` (generation), per adapter,
plus DJL's own ``QueueTime`` (the server's job queue, in microseconds) when present. A server without the
endpoint (400 when Prometheus is off, 404 elsewhere) is recorded as such and the run goes on.
"""

from __future__ import annotations

import time

import requests
from prometheus_client.parser import text_string_to_metric_families

QUEUE = "LorashipQueueSeconds"
INFERENCE = "LorashipInferenceSeconds"
TTFT = "LorashipTimeToFirstTokenSeconds"
OUTPUT_TOKENS = "LorashipOutputTokens"
REQUESTS = "LorashipRequests_"
SERVER_QUEUE = "QueueTime"  # DJL's, microseconds
SETTLE_S = 3.0
"""How long to wait, after a level, for the handler's last lines to reach the server's registry."""


def snapshot(url: str, timeout: float = 10.0) -> dict:
    """GET /server/metrics parsed: ``{available, status, types: {family: type}, samples: {(name, labels): value}}``,
    or ``{available: False, status, error}``; never raises."""
    try:
        resp = requests.get(url.rstrip("/") + "/server/metrics", timeout=timeout)
    except requests.RequestException as exc:
        return {"available": False, "status": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if resp.status_code != 200:
        return {"available": False, "status": resp.status_code, "error": resp.text[:300]}
    types, samples = {}, {}
    try:
        for family in text_string_to_metric_families(resp.text):
            types[family.name] = family.type
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    except ValueError as exc:
        return {"available": False, "status": resp.status_code, "error": f"not Prometheus text: {exc}"[:300]}
    return {"available": True, "status": 200, "types": types, "samples": samples}


def settled_snapshot(url: str, before: dict, answered: int, settle_s: float = SETTLE_S) -> dict:
    """The snapshot after a level. The handler's lines reach the server a moment after its replies, so while
    its request counters show fewer than the ``answered`` requests, it is read again: until they do, stop
    moving for a second (requests the server refused itself never reach them), or ``settle_s`` has passed."""
    start = last_change = time.monotonic()
    last = None
    while True:
        after = snapshot(url)
        now = time.monotonic()
        if not after["available"] or not before.get("available") or now - start >= settle_s:
            return after
        counted = sum(
            v - before["samples"].get(k, 0.0)
            for k, v in after["samples"].items()
            if k[0].startswith(REQUESTS) and k[0].endswith("_total")
        )
        if counted >= answered:
            return after
        if counted != last:
            last, last_change = counted, now
        elif now - last_change >= 1.0:
            return after
        time.sleep(0.1)


def _label(labels: tuple) -> str:
    return ",".join(f"{k}={v}" for k, v in labels) or "-"


def difference(before: dict, after: dict) -> dict:
    """What the level changed, for bench.json: counters' increments and histograms' count and sum increments
    (those that moved), and gauges' values after the level; each by family, then by its labels (``Adapter=a``)."""
    if not before.get("available") or not after.get("available"):
        bad = after if before.get("available") else before
        return {"available": False, "status": bad.get("status"), "error": bad.get("error")}
    old = before["samples"]
    counters, histograms, gauges = {}, {}, {}
    for family, kind in sorted(after["types"].items()):
        for (name, labels), value in after["samples"].items():
            label = _label(labels)
            if kind == "counter" and name == family + "_total":
                inc = value - old.get((name, labels), 0.0)
                if inc:
                    counters.setdefault(family, {})[label] = inc
            elif kind == "histogram" and name == family + "_count":
                count = value - old.get((name, labels), 0.0)
                if count:
                    total = after["samples"].get((family + "_sum", labels), 0.0)
                    total -= old.get((family + "_sum", labels), 0.0)
                    histograms.setdefault(family, {})[label] = {"count": count, "sum": total}
            elif kind == "gauge" and name == family:
                gauges.setdefault(family, {})[label] = value
    return {"available": True, "status": 200, "counters": counters, "histograms": histograms, "gauges": gauges}


def _mean(hist: dict | None, scale: float = 1.0) -> float | None:
    if not hist or not hist["count"]:
        return None
    return hist["sum"] / hist["count"] * scale


def _merged(histogram: dict) -> dict:
    return {"count": sum(h["count"] for h in histogram.values()), "sum": sum(h["sum"] for h in histogram.values())}


def latency_split(diff: dict, level: dict | None = None) -> dict | None:
    """Mean seconds per request row as the server measured them, overall and per adapter: its job queue (DJL's
    QueueTime), the handler's queue, TTFT and inference; with the client's mean E2E from ``level`` beside them.
    None unless the handler's queue and inference histograms moved."""
    hist = diff.get("histograms") or {}
    if not hist.get(QUEUE) or not hist.get(INFERENCE):
        return None
    tokens = (diff.get("counters") or {}).get(OUTPUT_TOKENS, {})
    server_queue = _mean(_merged(hist[SERVER_QUEUE]), 1e-6) if hist.get(SERVER_QUEUE) else None

    def part(queue: dict, inference: dict, ttft: dict | None, e2e: float | None) -> dict:
        out = {
            "rows": int(inference["count"]),
            "server_queue_s": server_queue,
            "queue_s": _mean(queue),
            "ttft_s": _mean(ttft),
            "inference_s": _mean(inference),
            "e2e_mean_s": e2e,
        }
        known = [v for v in (server_queue, out["queue_s"], out["inference_s"]) if v is not None]
        # What the server's figures leave out of the client's time: the network, parsing, writing the reply.
        out["other_s"] = e2e - sum(known) if e2e is not None else None
        return out

    level = level or {}
    e2e_all = ((level.get("latency") or {}).get("e2e_s") or {}).get("mean")
    ttft = _merged(hist[TTFT]) if hist.get(TTFT) else None
    split = part(_merged(hist[QUEUE]), _merged(hist[INFERENCE]), ttft, e2e_all)
    split["source"] = "/server/metrics"
    split["adapters"] = {}
    for label, inference in sorted(hist[INFERENCE].items()):
        adapter = label.split("=", 1)[-1]
        stats = (level.get("adapters") or {}).get(adapter) or {}
        e2e = ((stats.get("latency") or {}).get("e2e_s") or {}).get("mean")
        queue = hist[QUEUE].get(label, {"count": 0, "sum": 0.0})
        split["adapters"][adapter] = {
            **part(queue, inference, (hist.get(TTFT) or {}).get(label), e2e),
            "output_tokens": tokens.get(label),
        }
    return split
