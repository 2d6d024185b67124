"""The gate's reports: gate.json (which rollout reads back), gate.md and junit.xml."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from .checks import BASE, FAIL, PASS, SKIP, GateResult, _fmt, _num, _read_json_object
from .policy import GateInputError, Policy

WORST_SAMPLES = 3


def load_report(path: str | Path) -> dict:
    """A ``gate.json`` as ``run_gate`` writes it (``GateResult.to_dict``); GateInputError names what is off."""
    path = Path(path)
    data = _read_json_object(path, "gate report")
    problems = []
    if data.get("verdict") not in (PASS, FAIL):
        problems.append(f"verdict is {data.get('verdict')!r}, expected 'pass' or 'fail'")
    if not isinstance(data.get("checks"), list) or not all(isinstance(c, dict) for c in data["checks"]):
        problems.append("checks: expected a list of objects")
    adapters = data.get("adapters")
    if not isinstance(adapters, dict) or not all(isinstance(v, dict) for v in adapters.values()):
        problems.append("adapters: expected an object of {name: {sha256, verdict}}")
    if problems:
        raise GateInputError(f"{path} is not a `loraship gate` report: " + "; ".join(problems))
    return data


def failed_checks(report: dict) -> list[str]:
    """``adapter/metric/check`` of every failed check in a report from ``load_report``."""
    return [
        "/".join(str(c[k]) for k in ("adapter", "metric", "check") if c.get(k))
        for c in report["checks"]
        if c.get("status") == FAIL
    ]


def write_reports(out: Path, result: GateResult, evaluation: dict, eval_dir: Path, policy: Policy, policy_path) -> None:
    """gate.json, gate.md and junit.xml into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gate.json", json.dumps(result.to_dict(), indent=2) + "\n")
    _write(out / "gate.md", gate_markdown(result, evaluation, eval_dir, policy, policy_path))
    _write(out / "junit.xml", junit_xml(result))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def junit_xml(result: GateResult) -> str:
    """One <testcase> per check: a failure for a failed check, <skipped> for a skipped one."""
    suite = ET.Element(
        "testsuite",
        name="loraship-gate",
        tests=str(len(result.checks)),
        failures=str(sum(c.status == FAIL for c in result.checks)),
        skipped=str(sum(c.status == SKIP for c in result.checks)),
        errors="0",
    )
    for c in result.checks:
        name = f"{c.metric}.{c.check}" if c.metric else c.check
        case = ET.SubElement(suite, "testcase", classname=f"gate.{c.adapter or 'eval'}", name=name)
        if c.status == FAIL:
            ET.SubElement(
                case, "failure", message=c.reason, type=c.check
            ).text = f"threshold={c.threshold!r} value={c.value!r}\n{c.reason}"
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", message=c.reason)
        else:
            ET.SubElement(case, "system-out").text = c.reason
    root = ET.Element("testsuites", name="loraship gate", tests=suite.get("tests"), failures=suite.get("failures"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _read_samples(eval_dir: Path, evaluation: dict, task: str, variant: str) -> dict[int, dict] | None:
    rel = ((evaluation.get("samples") or {}).get(task) or {}).get(variant)
    if not rel or not (eval_dir / rel).is_file():
        return None
    out = {}
    try:
        with open(eval_dir / rel, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    out[rec["doc_id"]] = rec
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the summary then lists no samples; the verdict never depends on them
    return out


def worst_samples(eval_dir: Path, evaluation: dict, adapter: str, metric: str, k: int = WORST_SAMPLES) -> list[dict]:
    """The ``k`` documents where ``adapter`` lost most against the base on ``metric`` (losses only)."""
    entry = evaluation["metrics"].get(metric)
    task = entry.get("task") if isinstance(entry, dict) else None
    base = _read_samples(eval_dir, evaluation, task, BASE) if task else None
    mine = _read_samples(eval_dir, evaluation, task, adapter) if task else None
    if not base or not mine:
        return []
    sign = 1.0 if entry.get("higher_is_better", True) else -1.0
    rows = []
    for doc_id, rec in mine.items():
        b, a = _num(base.get(doc_id, {}).get(metric)), _num(rec.get(metric))
        if a is None or b is None or sign * (a - b) >= 0:
            continue
        rows.append(
            {
                "doc_id": doc_id,
                "gain": sign * (a - b),
                "base": b,
                "adapter": a,
                "doc": rec.get("doc") or {},
                "base_response": base[doc_id].get("response"),
                "adapter_response": rec.get("response"),
            }
        )
    rows.sort(key=lambda r: r["gain"])
    return rows[:k]


def _clip(text, n: int = 240) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def gate_markdown(result: GateResult, evaluation: dict, eval_dir: Path, policy: Policy, policy_path) -> str:
    lines = [
        f"# Gate: {result.verdict.upper()}",
        "",
        f"- eval: `{evaluation.get('mode')}` on {evaluation.get('data', {}).get('path')} "
        f"(sha256 {str(evaluation.get('data', {}).get('sha256'))[:12]}...), eval.json sha256 "
        f"{result.eval_sha256[:12]}...",
        f"- policy: `{policy_path}` (sha256 {result.policy_sha256[:12]}...)",
        "",
    ]
    for name, info in result.adapters.items():
        lines += [
            f"## {name}: {info['verdict'].upper()}",
            "",
            f"adapter sha256 `{info['sha256']}`",
            "",
            "| metric | check | status | threshold | value | reason |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in result.checks:
            if c.adapter != name:
                continue
            value = (
                f"{c.value:.4g}"
                if isinstance(c.value, float)
                else ("[" + ", ".join(_fmt(v, "+.4g") for v in c.value) + "]" if isinstance(c.value, list) else c.value)
            )
            if c.check == "adapter_sha256":
                value = f"{str(c.value)[:12]}..." if c.value else "n/a"
            threshold = f"{str(c.threshold)[:12]}..." if c.check == "adapter_sha256" and c.threshold else c.threshold
            lines.append(
                f"| {c.metric or '-'} | {c.check} | {c.status} | {threshold} | {value} | {c.reason.replace('|', '/')} |"
            )
        lines.append("")
        lines += _metric_table(evaluation, name)
        worst = []
        for metric in policy.metrics:
            for row in worst_samples(eval_dir, evaluation, name, metric):
                worst.append((metric, row))
        if worst:
            lines += [
                "### Worst regressed samples",
                "",
                f"Per gated metric, the {WORST_SAMPLES} documents where {name} lost most against the base.",
                "",
            ]
            for metric, row in worst:
                doc = row["doc"]
                lines += [
                    f"- **{metric}**, doc {row['doc_id']} (source row {doc.get('row')}): "
                    f"base {row['base']:.4g} -> {row['adapter']:.4g}",
                    f"  - instruction: {_clip(doc.get('instruction'))}",
                    f"  - reference: {_clip(doc.get('response'))}",
                ]
                if row["adapter_response"] is not None:
                    lines += [
                        f"  - base answer: {_clip(row['base_response'])}",
                        f"  - adapter answer: {_clip(row['adapter_response'])}",
                    ]
            lines.append("")
    if not result.adapters:
        lines += ["No adapter was scored: nothing can pass.", ""]
    return "\n".join(lines)


def _metric_table(evaluation: dict, adapter: str) -> list[str]:
    conf = (evaluation.get("bootstrap") or {}).get("confidence", 0.95)
    rows = []
    for metric, entry in evaluation["metrics"].items():
        s = (entry.get("adapters") or {}).get(adapter) if isinstance(entry, dict) else None
        if not isinstance(s, dict):
            continue
        ci = s.get("ci") if isinstance(s.get("ci"), list) and len(s["ci"]) == 2 else [None, None]
        better = "higher" if entry.get("higher_is_better") else "lower"
        rows.append(
            f"| {metric} | {better} | {_fmt(entry.get('base'))} | {_fmt(s.get('value'))} "
            f"| {_fmt(s.get('delta'), '+.4g')} | [{_fmt(ci[0], '+.4g')}, {_fmt(ci[1], '+.4g')}] "
            f"| {s.get('better')}/{s.get('worse')}/{s.get('same')} | {s.get('n')} |"
        )
    if not rows:
        return []
    return [
        f"| metric | better | base | adapter | delta | {conf:.0%} CI | docs better/worse/same | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]
