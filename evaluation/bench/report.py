"""Writing a run's outputs: bench.json, requests.jsonl, summary.md and the PNG plots."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .client import RequestRecord


def write_outputs(result: dict, records: list[RequestRecord], out: Path) -> None:
    from .plots import write_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "requests.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict()) + "\n")
    result["files"] = {
        "requests": "requests.jsonl",
        "summary": "summary.md",
        "plots": write_plots(result, records, out),
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")


# -- summary.md ------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    value = seconds * 1000
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def server_line(result: dict) -> str:
    srv = result["server"]
    api = result["config"].get("api", "lmi")
    if srv.get("kind") == "sagemaker":
        sm = srv["sagemaker"]
        desc = sm["describe_endpoint"]
        where = "".join(
            f", {label} {sm[key]}"
            for key, label in (("inference_component", "inference component"), ("target_variant", "variant"))
            if sm.get(key)
        )
        state = (
            f"DescribeEndpoint: {desc['body'].get('EndpointStatus')}"
            if desc["available"]
            else f"DescribeEndpoint unavailable ({desc.get('error')})"
        )
        return f"Server: SageMaker endpoint `{sm['endpoint']}` in {sm['region']}{where}, API {api}; {state}."
    url = result["config"]["url"]
    if not srv["reachable"]:
        return f"Server: {url} did not answer /ping ({srv['ping'].get('error')})."
    model = srv.get("model_summary")
    if isinstance(model, dict):
        desc = (
            f"model `{model.get('modelName')}` (batch_size {model.get('batchSize')}, max_batch_delay "
            f"{model.get('maxBatchDelayMillis')} ms, {model.get('workers')} worker(s), adapters "
            f"{', '.join(model.get('adapters') or []) or 'none'})"
        )
    else:
        desc = f"model `{srv.get('model_name')}` (GET /models/{{m}}: HTTP {srv['model'].get('status')})"
    metrics = srv["metrics"]
    m = "available" if metrics["available"] else f"unavailable (HTTP {metrics['status'] or metrics.get('error')})"
    after = result.get("server_after", {}).get("ping", {})
    alive = (
        "" if after.get("status") == 200 else f" After the run /ping gave {after.get('status') or after.get('error')}."
    )
    return f"Server: {url}, API {api}, {desc}; /server/metrics {m}.{alive}"


def summary_markdown(result: dict) -> str:
    cfg = result["config"]
    levels = result["levels"]
    mode = "concurrency" if cfg["concurrency"] else "rate"
    sweep = ",".join(f"{v:g}" for v in (cfg["concurrency"] or cfg["rate"]))
    ver, mach = result["versions"], result["machine"]
    commit = (ver.get("git_commit") or "unknown")[:10] + (" (dirty)" if ver.get("git_dirty") else "")
    lines = [
        f"# loraship bench: {mode} {sweep}" + (" (interrupted)" if result["interrupted"] else ""),
        "",
        f"`{shlex.join(result['command'])}`" if result["command"] else "",
        "",
        f"Started {result['started_at']}, finished {result['finished_at']}.",
        server_line(result),
        f"Workload: {_prompts(cfg)}, adapters "
        f"{', '.join(cfg['adapters'])} ({cfg['mix']}), "
        f"{_asked(cfg)} = {_output(cfg)}, "
        f"streaming {'on' if cfg['stream'] else 'off'}, warm-up {cfg['warmup']}, seed {cfg['seed']}.",
        f"Machine: {mach['platform']}, {mach['cpus_usable'] or mach['cpu_count']} CPUs, {mach['memory_gib']} GiB, "
        f"load average {num((mach.get('load_average') or [None])[0], '.1f')} before, "
        f"{num((mach.get('load_average_after') or [None])[0], '.1f')} after; loraship {ver['loraship']} @ {commit}.",
        "",
        "Latencies in ms over successful requests; throughput over each level's wall-clock time. "
        + (
            "TTFT, TPOT and ITL are measured from streamed chunks (ITL per chunk)."
            if cfg["stream"]
            else "TTFT, TPOT and ITL need --stream."
        ),
        "",
        "## Throughput and latency",
        "",
    ]
    if not levels:
        lines += ["No level ran.", ""]
    rows = []
    for lv in levels:
        lat = lv["latency"]
        good = lv["goodput"]
        rows.append(
            [
                lv["label"] + (" (stopped)" if lv["interrupted"] else ""),
                lv["requests"],
                lv["ok"],
                pct(lv["error_rate"]),
                num(lv["requests_per_s"]),
                num(lv["output_tokens_per_s"], ".1f"),
                num(good["requests_per_s"]) if good else "-",
                *(ms(lat["e2e_s"][q]) for q in ("mean", "p50", "p90", "p95", "p99")),
                ms(lat["ttft_s"]["p50"]),
                ms(lat["ttft_s"]["p99"]),
                ms(lat["tpot_s"]["p50"]),
                ms(lat["itl_s"]["p50"]),
            ]
        )
    if rows:
        lines += table(
            [
                "level",
                "sent",
                "ok",
                "error rate",
                "req/s",
                "out tok/s",
                "goodput req/s",
                "E2E mean",
                "E2E p50",
                "p90",
                "p95",
                "p99",
                "TTFT p50",
                "TTFT p99",
                "TPOT p50",
                "ITL p50",
            ],
            rows,
        )
        lines.append("")
    if cfg["slo_ms"]:
        lines += [
            "Goodput: requests that succeeded and met every SLO "
            + ", ".join(f"{k} <= {v:g} ms" for k, v in cfg["slo_ms"].items())
            + "."
        ]
        notes = {lv["goodput"].get("note") for lv in levels if lv["goodput"] and lv["goodput"].get("note")}
        lines += [f"Goodput n/a: {n}." for n in notes] + [""]
    if len(levels) > 1 and levels[0]["output_tokens_per_s"]:
        first = levels[0]
        lines += [f"## Scaling against {first['label']}", ""]
        lines += table(
            ["level", "out tok/s", f"x {first['label']}", "E2E p50", f"x {first['label']}"],
            [
                [
                    lv["label"],
                    num(lv["output_tokens_per_s"], ".1f"),
                    num(_ratio(lv["output_tokens_per_s"], first["output_tokens_per_s"])),
                    ms(lv["latency"]["e2e_s"]["p50"]),
                    num(_ratio(lv["latency"]["e2e_s"]["p50"], first["latency"]["e2e_s"]["p50"])),
                ]
                for lv in levels
            ],
        )
        lines.append("")
    error_rows = [
        [lv["label"], status, count, (lv["error_examples"].get(status) or "")[:120].replace("|", "/")]
        for lv in levels
        for status, count in lv["status_counts"].items()
        if status != "200"
    ]
    lines += ["## Errors", ""]
    lines += table(["level", "status", "count", "example"], error_rows) if error_rows else ["None."]
    lines.append("")
    lines += _workload_section(result)
    lines += _server_split_section(levels)
    lines += _adapter_sections(result)
    lines += [
        "## Files",
        "",
        "- bench.json (schema: evaluation/bench/README.md)",
        "- requests.jsonl (one line per request)",
    ]
    lines += [f"- {p}" for p in result.get("files", {}).get("plots", [])]
    return "\n".join(lines) + "\n"


def _server_split_section(levels: list[dict]) -> list[str]:
    """Latency split into queue and inference as the server measured it (its /server/metrics, per level)."""
    if not levels or "server_metrics" not in levels[0]:
        return []  # a bench.json from before per-level snapshots
    lines = ["## Server-side latency: queue and inference", ""]
    rows = []
    for lv in levels:
        split = lv.get("latency_split")
        if not split:
            continue
        for name, part in [("all", split), *split["adapters"].items()]:
            rows.append(
                [
                    lv["label"],
                    name,
                    part["rows"],
                    ms(part["server_queue_s"]),
                    ms(part["queue_s"]),
                    ms(part["ttft_s"]),
                    ms(part["inference_s"]),
                    ms(part["e2e_mean_s"]),
                    ms(part["other_s"]),
                ]
            )
    if rows:
        lines += [
            "Mean ms per request from the server's /server/metrics, read before and after each level: DJL queue "
            "(DJL's QueueTime, the server's job queue, all adapters), handler queue (from the handler receiving a "
            "request to its generation's start), TTFT and inference (generation) as the handler measured them; "
            "E2E mean is the client's, and other = E2E - (DJL queue + handler queue + inference): the network, "
            "parsing and writing the reply.",
            "",
        ]
        lines += table(
            ["level", "adapter", "rows", "DJL queue", "handler queue", "TTFT", "inference", "E2E mean", "other"], rows
        )
    else:
        metrics = levels[0]["server_metrics"]
        lines.append(
            f"No split: /server/metrics unavailable (HTTP {metrics.get('status') or metrics.get('error')}; "
            "SERVING_PROMETHEUS=true enables it)."
            if not metrics.get("available")
            else "No split: /server/metrics has no LorashipQueueSeconds / LorashipInferenceSeconds (not loraship's "
            "handler, or option.metrics=false)."
        )
    lines.append("")
    return lines


def _ratio(a, b):
    return a / b if a is not None and b else None


def _adapter_sections(result: dict) -> list[str]:
    levels = result["levels"]
    lines = []
    rows = []
    for lv in levels:
        for name, st in lv["adapters"].items():
            cost = lv["adapter_cost"].get(name, {})
            rows.append(
                [
                    lv["label"],
                    name,
                    st["requests"],
                    pct(st["error_rate"]),
                    num(st["output_tokens_per_s"], ".1f"),
                    ms(st["latency"]["e2e_s"]["p50"]),
                    ms(st["latency"]["e2e_s"]["p99"]),
                    ms(st["latency"]["ttft_s"]["p50"]),
                    num(cost.get("e2e_p50_ratio")) if cost else "-",
                    num(cost.get("ttft_p50_ratio")) if cost else "-",
                ]
            )
    if rows:
        lines += ["## Per adapter", "", "Ratios are the adapter over `__base__` in the same level (equal load).", ""]
        lines += table(
            [
                "level",
                "adapter",
                "sent",
                "error rate",
                "out tok/s",
                "E2E p50",
                "E2E p99",
                "TTFT p50",
                "E2E p50 / base",
                "TTFT p50 / base",
            ],
            rows,
        )
        lines.append("")
    cw = result.get("cold_warm") or {}
    if cw:
        lines += [
            "## Cold vs warm",
            "",
            "Each adapter's first request of this run, sent alone before any load, against the median of "
            "the next ones. It is cold only if the server had not served that adapter before the run.",
            "",
        ]
        lines += table(
            ["adapter", "metric", "cold", "warm", "cold / warm", "cold status"],
            [
                [name, c["metric"], ms(c["cold_s"]), ms(c["warm_s"]), num(c["cold_over_warm"]), c["cold_status"]]
                for name, c in cw.items()
            ],
        )
        lines.append("")
    return lines


def _lengths(value) -> str:
    """64, or "one of 16, 32, 64" when each request drew its length (bench.json before lists: an int)."""
    values = value if isinstance(value, list) else [value]
    return str(values[0]) if len(values) == 1 else "one of " + ", ".join(map(str, values))


def _prompts(cfg: dict) -> str:
    if cfg.get("input_tokens") is not None:
        text = f"synthetic prompts of {cfg['input_tokens']:g} ± {cfg.get('input_tokens_stddev') or 0:g} tokens"
    else:
        text = f"{cfg['prompts']} prompts ({cfg['dataset'] or 'built-in FAQ questions'})"
    if cfg.get("prefixes"):
        text += f" after {cfg['prefixes']} shared prefixes of {cfg['prefix_tokens']} tokens"
    return text


def _asked(cfg: dict) -> str:
    if cfg.get("api", "lmi") == "lmi":
        return "max_new_tokens = min_new_tokens"
    return "max_tokens = min_tokens" if cfg.get("min_tokens") else "max_tokens"


def _output(cfg: dict) -> str:
    if cfg.get("output_lengths_from_dataset"):
        return "each row's reference answer's length"
    if cfg.get("max_new_tokens_stddev"):
        return f"{_lengths(cfg['max_new_tokens'])} ± {cfg['max_new_tokens_stddev']:g} (normal)"
    return _lengths(cfg["max_new_tokens"])


def _workload_section(result: dict) -> list[str]:
    """The workload each level turned out to have (bench.json's levels[].workload)."""
    levels = [lv for lv in result["levels"] if "workload" in lv]
    if not levels:
        return []

    def mean_sd(d: dict, spec: str = ".1f") -> str:
        return "n/a" if d["mean"] is None else f"{d['mean']:{spec}} ± {d['stddev']:{spec}}"

    lines = ["## Workload as sent", ""]
    lines += table(
        [
            "level",
            "prompt tokens (client)",
            "input tokens (server)",
            "asked tokens",
            "output tokens",
            "prefixes used",
            "gap ms (planned)",
            "gap CV",
            "max in flight",
        ],
        [
            [
                lv["label"],
                mean_sd(w["prompt_tokens"]),
                mean_sd(w["server_input_tokens"]),
                mean_sd(w["max_new_tokens"]),
                mean_sd(w["output_tokens"]),
                len(w["prefixes"]) or "-",
                ms(w["planned_gaps_s"]["mean"]) if w["planned_gaps_s"]["n"] else "-",
                num(w["planned_gaps_s"]["cv"]) if w["planned_gaps_s"]["n"] else "-",
                w["max_in_flight"],
            ]
            for lv in levels
            for w in [lv["workload"]]
        ],
    )
    return lines + [""]
