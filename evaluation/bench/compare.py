"""``loraship bench compare A/bench.json B/bench.json``: side-by-side figures and B/A ratios.

Levels are paired by name (``concurrency=8`` with ``concurrency=8``); when the runs share none
they are paired in order. ``--a-level``/``--b-level`` pick one level from each, so one file can be
compared with itself (``--a-level 1 --b-level 8``: batch 8 against batch 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from loraship.core.errors import LorashipError

from .report import _lengths

ROWS = [
    ("requests/s", lambda lv: lv["requests_per_s"]),
    ("output tokens/s", lambda lv: lv["output_tokens_per_s"]),
    ("goodput requests/s", lambda lv: (lv.get("goodput") or {}).get("requests_per_s")),
    ("error rate", lambda lv: lv["error_rate"]),
    ("E2E mean (ms)", lambda lv: _ms(lv["latency"]["e2e_s"]["mean"])),
    ("E2E p50 (ms)", lambda lv: _ms(lv["latency"]["e2e_s"]["p50"])),
    ("E2E p99 (ms)", lambda lv: _ms(lv["latency"]["e2e_s"]["p99"])),
    ("TTFT p50 (ms)", lambda lv: _ms(lv["latency"]["ttft_s"]["p50"])),
    ("TTFT p99 (ms)", lambda lv: _ms(lv["latency"]["ttft_s"]["p99"])),
    ("TPOT p50 (ms)", lambda lv: _ms(lv["latency"]["tpot_s"]["p50"])),
    ("ITL p50 (ms)", lambda lv: _ms(lv["latency"]["itl_s"]["p50"])),
]


class CompareError(LorashipError):
    pass


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def load(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from None
    if not str(data.get("schema", "")).startswith("loraship.bench/"):
        raise CompareError(f"{path} is not a loraship bench.json (no 'schema')")
    data["_path"] = str(path)
    return data


def _find(run: dict, key: str) -> dict:
    for lv in run["levels"]:
        if key in (lv["label"], f"{lv['value']:g}"):
            return lv
    raise CompareError(f"{run['_path']} has no level {key!r}; it has {', '.join(lv['label'] for lv in run['levels'])}")


def pair_levels(a: dict, b: dict, level_a: str | None = None, level_b: str | None = None) -> list[tuple[dict, dict]]:
    if level_a or level_b:
        la = _find(a, level_a) if level_a else a["levels"][0]
        lb = _find(b, level_b or level_a)
        return [(la, lb)]
    by_label = {lv["label"]: lv for lv in b["levels"]}
    pairs = [(lv, by_label[lv["label"]]) for lv in a["levels"] if lv["label"] in by_label]
    return pairs or list(zip(a["levels"], b["levels"]))


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _describe(run: dict) -> str:
    model = run["server"].get("model_summary")
    if model is None and run["server"]["model"].get("available"):
        model = run["server"]["model"].get("body")  # a run recorded before model_summary: the old host's dict
    batch = f"batch_size {model.get('batchSize')}, " if isinstance(model, dict) else ""
    commit = (run["versions"].get("git_commit") or "?")[:10]
    adapters = ",".join(run["config"]["adapters"])
    target = run.get("target") or {}  # a run from before --api: LMI over HTTP
    where = target.get("endpoint") if target.get("kind") == "sagemaker" else target.get("url", run["config"]["url"])
    return (
        f"{run['_path']}: {where} ({target.get('api', 'lmi')}), {batch}adapters {adapters}, "
        f"stream {run['config']['stream']}, "
        f"max_new_tokens {_lengths(run['config']['max_new_tokens'])}, commit {commit}, started {run['started_at']}"
    )


def compare_text(a: dict, b: dict, level_a: str | None = None, level_b: str | None = None) -> str:
    """The comparison as plain text: one table per level pair, then per-adapter E2E p50."""
    pairs = pair_levels(a, b, level_a, level_b)
    if not pairs:
        raise CompareError("the runs have no levels to compare")
    lines = [f"A = {_describe(a)}", f"B = {_describe(b)}", ""]
    width = max(len(name) for name, _ in ROWS) + 2
    for la, lb in pairs:
        lines.append(f"{'A ' + la['label'] + ' vs B ' + lb['label']:<{width}}{'A':>12}{'B':>12}{'B/A':>9}")
        for name, get in ROWS:
            va, vb = get(la), get(lb)
            ratio = vb / va if va and vb is not None else None
            lines.append(f"  {name:<{width - 2}}{_fmt(va):>12}{_fmt(vb):>12}{_fmt(ratio):>9}")
        common = [n for n in la["adapters"] if n in lb["adapters"]]
        for name in common:
            va = _ms(la["adapters"][name]["latency"]["e2e_s"]["p50"])
            vb = _ms(lb["adapters"][name]["latency"]["e2e_s"]["p50"])
            ratio = vb / va if va and vb is not None else None
            lines.append(f"  {'E2E p50 ' + name:<{width - 2}}{_fmt(va):>12}{_fmt(vb):>12}{_fmt(ratio):>9}")
        lines.append("")
    return "\n".join(lines)
