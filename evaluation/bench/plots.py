"""PNG plots with matplotlib (Agg): throughput and latency percentiles against the level, and a
latency CDF per adapter (TTFT when streaming, else end-to-end) for each level."""

from __future__ import annotations

import math
from pathlib import Path

from .client import RequestRecord
from .workload import BASE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(result: dict, records: list[RequestRecord], out: Path) -> list[str]:
    """Write the plots into ``out``; return their file names (none when no level ran)."""
    levels = result["levels"]
    if not levels:
        return []
    plt = _pyplot()
    stream = result["config"]["stream"]
    names = [_throughput(plt, levels, out / "throughput.png"), _latency(plt, levels, stream, out / "latency.png")]
    metric = "ttft" if stream else "e2e"
    measured = [r for r in records if r.phase == "measure" and r.ok]
    names.append(_cdf(plt, levels, measured, metric, out / f"{metric}_cdf.png"))
    return names


def _xaxis(ax, levels: list[dict]) -> None:
    mode = levels[0]["mode"]
    values = [lv["value"] for lv in levels]
    ax.set_xlabel("concurrency (closed loop)" if mode == "concurrency" else "arrival rate, req/s (Poisson)")
    if mode == "concurrency" and len(values) > 1 and min(values) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.grid(True, alpha=0.3)


def _throughput(plt, levels: list[dict], path: Path) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = [lv["value"] for lv in levels]
    ax1.plot(x, [lv["requests_per_s"] or 0 for lv in levels], "o-", label="requests/s (ok)")
    if levels[0]["mode"] == "rate":  # below this line the server does not keep up with the arrivals
        ax1.plot(x, x, ":", color="gray", label="offered rate")
    if any(lv["goodput"] and lv["goodput"]["requests_per_s"] is not None for lv in levels):
        ax1.plot(x, [(lv["goodput"] or {}).get("requests_per_s") or 0 for lv in levels], "s--", label="goodput")
    ax1.set_ylabel("requests/s")
    ax1.set_title("Request throughput")
    ax1.legend()
    ax2.plot(x, [lv["output_tokens_per_s"] or 0 for lv in levels], "o-", color="tab:green")
    ax2.set_ylabel("output tokens/s")
    ax2.set_title("Output token throughput")
    for ax in (ax1, ax2):
        _xaxis(ax, levels)
        ax.set_ylim(bottom=0)
    for lv in levels:
        if lv["errors"]:
            ax1.annotate(
                f"{lv['errors']} err",
                (lv["value"], lv["requests_per_s"] or 0),
                color="tab:red",
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _latency(plt, levels: list[dict], stream: bool, path: Path) -> str:
    metrics = [("e2e_s", "End-to-end latency")]
    if stream:
        metrics += [("ttft_s", "Time to first token"), ("tpot_s", "Time per output token")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    x = [lv["value"] for lv in levels]
    for ax, (key, title) in zip(axes[0], metrics):
        for q in ("p50", "p90", "p95", "p99"):
            ys = [lv["latency"][key][q] for lv in levels]
            ax.plot(x, [y * 1000 if y is not None else math.nan for y in ys], "o-", label=q)
        ax.set_title(title)
        ax.set_ylabel("ms")
        _xaxis(ax, levels)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _cdf(plt, levels: list[dict], records: list[RequestRecord], metric: str, path: Path) -> str:
    cols = min(len(levels), 2)
    rows = math.ceil(len(levels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    adapters = sorted({r.adapter for r in records})
    for ax, lv in zip(axes.flat, levels):
        for name in adapters:
            values = sorted(
                getattr(r, metric) * 1000
                for r in records
                if r.level == lv["label"] and r.adapter == name and getattr(r, metric) is not None
            )
            if values:
                # matplotlib hides legend labels that start with "_", as "__base__" does.
                shown = "base model" if name == BASE else name
                ax.step(
                    [values[0], *values],
                    [0.0, *((i + 1) / len(values) for i in range(len(values)))],
                    where="post",
                    label=f"{shown} (n={len(values)})",
                )
        ax.set_title(f"{metric.upper()} CDF, {lv['label']}")
        ax.set_xlabel(f"{metric.upper()} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(levels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
