"""``loraship gate``: turn eval scores (and optionally a bench run) and a policy into pass or fail.

    loraship gate --eval runs/eval/eval.json --policy evaluation/policies/default.yaml --out runs/gate
    loraship gate --eval runs/eval/eval.json --policy ... --bench runs/bench/b8/bench.json --out runs/gate

The gate fails closed: a metric the policy names but the eval lacks, a value that is not a
number, too few samples, an adapter whose files no longer hash to what was scored, or a budget
the bench run cannot show, each fails with a reason. It writes ``gate.json`` (read by the rollout
code: keep its top-level shape), ``gate.md`` (a summary with each adapter's worst regressed
samples) and ``junit.xml`` (one test case per check, for CI systems).

One module per job: ``policy`` (the policy file), ``checks`` (the checks against eval.json and
bench.json) and ``report`` (writing gate.json, gate.md and junit.xml, and reading gate.json back).

Exit codes: 0 pass, 1 fail, 2 invalid input (an unreadable or malformed eval, policy or bench file).
"""

from __future__ import annotations

from pathlib import Path

from loraship.core.hashing import file_sha256

from .checks import (
    BASE,
    EXIT_FAIL,
    EXIT_INVALID,
    EXIT_PASS,
    FAIL,
    PASS,
    SKIP,
    Check,
    GateResult,
    bench_figures,
    budget_checks,
    hash_check,
    judge,
    load_bench,
    load_eval,
    metric_checks,
)
from .policy import DEFAULT_POLICY, Budgets, GateInputError, MetricRule, Policy, load_policy
from .report import WORST_SAMPLES, failed_checks, gate_markdown, junit_xml, load_report, worst_samples, write_reports

__all__ = [
    "BASE",
    "DEFAULT_POLICY",
    "EXIT_FAIL",
    "EXIT_INVALID",
    "EXIT_PASS",
    "FAIL",
    "PASS",
    "SKIP",
    "WORST_SAMPLES",
    "Budgets",
    "Check",
    "GateInputError",
    "GateResult",
    "MetricRule",
    "Policy",
    "bench_figures",
    "budget_checks",
    "failed_checks",
    "gate_markdown",
    "hash_check",
    "junit_xml",
    "load_bench",
    "load_eval",
    "load_policy",
    "load_report",
    "metric_checks",
    "run_gate",
    "worst_samples",
]


def run_gate(
    eval_path: str | Path,
    policy_path: str | Path,
    out: str | Path,
    *,
    bench_path: str | Path | None = None,
    adapter_dirs: dict[str, str | Path] | None = None,
) -> GateResult:
    """Judge every adapter of an eval file; write gate.json, gate.md and junit.xml into ``out``."""
    evaluation = load_eval(eval_path)
    policy = load_policy(policy_path)
    figures = bench_figures(load_bench(bench_path)) if bench_path else None
    adapter_dirs = adapter_dirs or {}
    unknown = sorted(set(adapter_dirs) - set(evaluation["adapters"]))
    if unknown:
        raise GateInputError(
            f"--adapter {', '.join(unknown)}: not in the eval file (it has "
            f"{', '.join(evaluation['adapters']) or 'none'})"
        )
    verdict, checks, adapters = judge(evaluation, policy, figures, adapter_dirs)
    result = GateResult(verdict, checks, adapters, file_sha256(policy_path), file_sha256(eval_path))
    write_reports(Path(out), result, evaluation, Path(eval_path).parent, policy, policy_path)
    return result
