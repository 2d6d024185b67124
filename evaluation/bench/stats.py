"""Statistics over request records: percentiles, throughput, error rates, goodput, per-adapter views.

Latency distributions use successful requests only; failed ones are counted in ``errors`` and
``status_counts`` (never averaged in). Throughput is over the level's wall-clock time, so errors
and idle time lower it. Percentiles are numpy's linear interpolation, as in vLLM's ``bench serve``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .client import RequestRecord

PERCENTILES = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")
SLO_KEYS = ("ttft", "tpot", "e2e")
BASE = "__base__"


def distribution(values) -> dict:
    """n, mean, min, max and p50/p90/p95/p99 of ``values`` (None for each when there are none)."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    out = {"n": int(vals.size)}
    if vals.size == 0:
        out.update({"mean": None, "min": None, "max": None, **{f"p{p}": None for p in PERCENTILES}})
        return out
    out.update({"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max())})
    out.update({f"p{p}": float(np.percentile(vals, p)) for p in PERCENTILES})
    return out


def latency(records: list[RequestRecord]) -> dict:
    """Distributions of TTFT, TPOT, ITL (all gaps pooled) and end-to-end latency, in seconds."""
    ok = [r for r in records if r.ok]
    return {
        "ttft_s": distribution(r.ttft for r in ok),
        "tpot_s": distribution(r.tpot for r in ok),
        "itl_s": distribution(g for r in ok for g in r.itl),
        "e2e_s": distribution(r.e2e for r in ok),
    }


def status_counts(records: list[RequestRecord]) -> dict[str, int]:
    return dict(sorted(Counter(str(r.status) for r in records).items()))


def first_errors(records: list[RequestRecord], limit: int = 3) -> dict[str, str]:
    """One example message per failing status, for the report."""
    seen: dict[str, str] = {}
    for r in records:
        if not r.ok and str(r.status) not in seen and len(seen) < limit:
            seen[str(r.status)] = r.error or ""
    return seen


def meets_slo(rec: RequestRecord, slo_ms: dict[str, float]) -> bool | None:
    """True/False for a successful request; None when an SLO metric was not measured (e.g. TTFT without streaming)."""
    if not rec.ok:
        return False
    for key, limit in slo_ms.items():
        value = rec.e2e if key == "e2e" else rec.ttft if key == "ttft" else rec.tpot
        if value is None:
            if key == "tpot" and rec.ttft is not None and rec.output_tokens is not None and rec.output_tokens < 2:
                continue  # a one-token reply has no TPOT; it cannot miss that SLO
            return None
        if value * 1000.0 > limit:
            return False
    return True


def goodput(records: list[RequestRecord], slo_ms: dict[str, float], wall_s: float) -> dict | None:
    """Requests/s that succeeded *and* met every SLO (DistServe's goodput), and their share of all requests."""
    if not slo_ms:
        return None
    verdicts = [meets_slo(r, slo_ms) for r in records]
    if any(v is None for v in verdicts):
        missing = [k for k in slo_ms if k in ("ttft", "tpot")]
        return {
            "slo_ms": dict(slo_ms),
            "good": None,
            "requests_per_s": None,
            "fraction": None,
            "note": f"{', '.join(missing)} not measured: needs --stream",
        }
    good = sum(bool(v) for v in verdicts)
    return {
        "slo_ms": dict(slo_ms),
        "good": good,
        "requests_per_s": good / wall_s if wall_s > 0 else None,
        "fraction": good / len(records) if records else None,
    }


def throughput(records: list[RequestRecord], wall_s: float) -> dict:
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    per_s = (lambda x: x / wall_s) if wall_s > 0 else (lambda x: None)
    return {
        "requests_per_s": per_s(len(ok)),
        "output_tokens_per_s": per_s(out_tokens),
        "input_tokens_per_s": per_s(in_tokens),
        "output_tokens": out_tokens,
        "input_tokens": in_tokens,
    }


def counts(records: list[RequestRecord]) -> dict:
    errors = sum(not r.ok for r in records)
    return {
        "requests": len(records),
        "ok": len(records) - errors,
        "errors": errors,
        "error_rate": errors / len(records) if records else None,
        "status_counts": status_counts(records),
        "error_examples": first_errors(records),
    }


def summarize_level(records: list[RequestRecord], wall_s: float, slo_ms: dict[str, float] | None = None) -> dict:
    """Everything bench.json holds for one level except its name and run state."""
    per_adapter = {}
    for name in sorted({r.adapter for r in records}):
        sub = [r for r in records if r.adapter == name]
        per_adapter[name] = {**counts(sub), **throughput(sub, wall_s), "latency": latency(sub)}
    return {
        **counts(records),
        "wall_s": wall_s,
        **throughput(records, wall_s),
        "latency": latency(records),
        "goodput": goodput(records, slo_ms or {}, wall_s),
        "adapters": per_adapter,
        "adapter_cost": adapter_cost(per_adapter),
    }


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def adapter_cost(per_adapter: dict[str, dict], base: str = BASE) -> dict[str, dict]:
    """Each adapter over the base model in the same level (so at equal load): latency ratios > 1 cost."""
    if base not in per_adapter:
        return {}
    b = per_adapter[base]["latency"]
    out = {}
    for name, stats in per_adapter.items():
        if name == base:
            continue
        lat = stats["latency"]
        out[name] = {
            f"{m}_{q}_ratio": _ratio(lat[f"{m}_s"][q], b[f"{m}_s"][q])
            for m in ("e2e", "ttft", "tpot")
            for q in ("mean", "p50", "p99")
        }
    return out


def cold_warm(probe: list[RequestRecord]) -> dict[str, dict]:
    """Per adapter: its first request of the run (cold) against the median of the next ones (warm).

    The probe sends them one at a time before any load, so queueing does not blur the difference.
    The metric is TTFT when streaming, else end-to-end latency.
    """
    out = {}
    for name in dict.fromkeys(r.adapter for r in probe):
        recs = [r for r in probe if r.adapter == name]
        stream = recs[0].stream
        metric = "ttft" if stream else "e2e"
        value = (lambda r: r.ttft) if stream else (lambda r: r.e2e)
        cold, warm = recs[0], [value(r) for r in recs[1:] if r.ok]
        warm_s = float(np.median(warm)) if warm else None
        cold_s = value(cold) if cold.ok else None
        out[name] = {
            "metric": metric,
            "cold_s": cold_s,
            "warm_s": warm_s,
            "cold_over_warm": _ratio(cold_s, warm_s),
            "cold_status": cold.status,
            "warm_samples": len(warm),
        }
    return out


def spread(values) -> dict:
    """``distribution`` with the standard deviation and the coefficient of variation (stddev / mean)."""
    vals = [v for v in values if v is not None]
    out = distribution(vals)
    if vals:
        std = float(np.std(np.asarray(vals, dtype=float)))
        out["stddev"] = std
        out["cv"] = std / out["mean"] if out["mean"] else None
    else:
        out["stddev"] = out["cv"] = None
    return out


def _gaps(offsets: list[float]) -> list[float]:
    ordered = sorted(offsets)
    return [b - a for a, b in zip(ordered, ordered[1:])]


def realised(records: list[RequestRecord], ramp_up: float = 0.0, max_in_flight: int | None = None) -> dict:
    """What a level's requests turned out to be, beside the parameters that shaped them: prompt tokens (the
    client's tokenizer's count, and the server's), output tokens asked for and served, how often each shared
    prefix was used, the gaps between arrivals (as scheduled, and as sent), and the most requests in flight."""
    levels = {r.level for r in records}  # gaps are taken within each level, then pooled
    planned_gaps = [
        g for lv in levels for g in _gaps([r.planned_at for r in records if r.level == lv and r.planned_at is not None])
    ]
    sent_gaps = [g for lv in levels for g in _gaps([r.sent_at for r in records if r.level == lv])]
    planned = [r.planned_at for r in records if r.planned_at is not None]
    asked = Counter(r.max_new_tokens for r in records if r.max_new_tokens is not None)
    out = {
        "requests": len(records),
        "prompt_tokens": spread(r.counted_prompt_tokens for r in records),
        "server_input_tokens": spread(r.input_tokens for r in records if r.ok),
        "max_new_tokens": {
            **spread(r.max_new_tokens for r in records),
            "counts": {str(k): v for k, v in sorted(asked.items())} if len(asked) <= 16 else None,
        },
        "output_tokens": spread(r.output_tokens for r in records if r.ok),
        "output_tokens_from": dict(Counter(str(r.tokens_from) for r in records if r.ok)),
        "prefixes": {str(k): v for k, v in sorted(Counter(r.prefix for r in records if r.prefix is not None).items())},
        "planned_gaps_s": spread(planned_gaps),
        "sent_gaps_s": spread(sent_gaps),
        "max_in_flight": max_in_flight,
    }
    if ramp_up:
        firsts = {lv: min(r.sent_at for r in records if r.level == lv) for lv in levels}
        out["ramp_up"] = {
            "seconds": ramp_up,
            "planned_in_ramp": sum(p < ramp_up for p in planned) if planned else None,
            "sent_in_ramp": sum(r.sent_at - firsts[r.level] < ramp_up for r in records),
            "planned_starts_s": sorted(planned) if len(planned) <= 64 else None,
        }
    return out
