"""The gate's checks: each adapter's eval scores (and bench figures) against the policy."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from loraship.core.hashing import adapter_sha256

from .policy import Budgets, GateInputError, MetricRule, Policy

BASE = "__base__"
PASS, FAIL, SKIP = "pass", "fail", "skip"
EXIT_PASS, EXIT_FAIL, EXIT_INVALID = EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT  # the CLI's codes


def _read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GateInputError(f"cannot read {what} file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise GateInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_eval(path: str | Path) -> dict:
    path = Path(path)
    data = _read_json_object(path, "eval")
    problems = []
    if not str(data.get("schema", "")).startswith("loraship.eval/"):
        problems.append(f"schema is {data.get('schema')!r}, expected loraship.eval/1 (a `loraship eval` output)")
    for key in ("metrics", "adapters"):
        if not isinstance(data.get(key), dict):
            problems.append(f"{key}: expected an object")
    if problems:
        raise GateInputError(f"{path}: " + "; ".join(problems))
    return data


def load_bench(path: str | Path) -> dict:
    return _read_json_object(Path(path), "bench")


def bench_figures(bench: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{level: {variant: {"p99_latency_s", "output_tokens_per_s"}}}`` from a bench result.

    The only place that knows bench.json's layout (``loraship.bench/1``, evaluation/bench/README.md):
    ``levels[].label`` and ``levels[].adapters[<name> | "__base__"]`` with ``latency.e2e_s.p99``,
    ``output_tokens``, ``ok`` and ``latency.e2e_s.mean``. Output tokens/s is per request (a
    request's tokens over its own latency, averaged), so it does not depend on how the bench's
    mix shared the load between adapters.
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for i, level in enumerate(bench.get("levels") or []):
        if not isinstance(level, dict):
            continue
        label = str(level.get("label") or f"level {i}")
        for name, st in (level.get("adapters") or {}).items():
            e2e = ((st or {}).get("latency") or {}).get("e2e_s") or {}
            ok, tokens, mean = st.get("ok"), st.get("output_tokens"), e2e.get("mean")
            speed = tokens / ok / mean if ok and tokens is not None and mean else None
            out.setdefault(label, {})[name] = {"p99_latency_s": e2e.get("p99"), "output_tokens_per_s": speed}
    return out


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _fmt(x, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


@dataclass
class Check:
    adapter: str
    metric: str | None
    check: str
    status: str
    threshold: Any
    value: Any
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def metric_checks(
    adapter: str, metric: str, rule: MetricRule, entry: dict | None, policy: Policy, confidence: float
) -> list[Check]:
    """Every check ``rule`` asks of one adapter on one metric; the first failure to read stops the rest."""

    def check(kind, ok, threshold, value, reason):
        return Check(adapter, metric, kind, PASS if ok else FAIL, threshold, value, reason)

    entry = entry if isinstance(entry, dict) else None
    scores = (entry.get("adapters") or {}).get(adapter) if entry else None
    if entry is None or not isinstance(scores, dict):
        where = "from eval.json" if entry is None else f"for adapter {adapter!r} in eval.json"
        return [check("present", False, None, None, f"{metric} is missing {where}")]
    out = []
    min_samples = rule.min_samples if rule.min_samples is not None else policy.min_samples
    n = scores.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) else None
    out.append(
        check(
            "min_samples",
            n is not None and n >= min_samples,
            min_samples,
            n,
            f"{n} documents scored, {min_samples} needed" if n is not None else "no sample count",
        )
    )
    value, base, delta = _num(scores.get("value")), _num(entry.get("base")), _num(scores.get("delta"))
    ci = scores.get("ci") if isinstance(scores.get("ci"), list) and len(scores.get("ci")) == 2 else [None, None]
    lo, hi = _num(ci[0]), _num(ci[1])
    missing = [
        k for k, v in (("value", value), ("base", base), ("delta", delta), ("ci low", lo), ("ci high", hi)) if v is None
    ]
    out.append(
        check(
            "finite",
            not missing,
            None,
            None if missing else value,
            f"not a number: {', '.join(missing)}" if missing else "value, base, delta and CI are numbers",
        )
    )
    if missing:
        return out
    higher = bool(entry.get("higher_is_better", True))
    sign = 1.0 if higher else -1.0
    gain = sign * delta
    gain_lo, gain_hi = sorted((sign * lo, sign * hi))
    pct = f"{confidence:.0%}"
    ci_text = f"{pct} CI of the delta [{lo:+.4g}, {hi:+.4g}]"
    direction = "higher" if higher else "lower"
    if rule.floor is not None:
        out.append(
            check(
                "floor",
                value >= rule.floor,
                rule.floor,
                value,
                f"{_fmt(value)} {'>=' if value >= rule.floor else '<'} floor {rule.floor:g}",
            )
        )
    if rule.ceiling is not None:
        out.append(
            check(
                "ceiling",
                value <= rule.ceiling,
                rule.ceiling,
                value,
                f"{_fmt(value)} {'<=' if value <= rule.ceiling else '>'} ceiling {rule.ceiling:g}",
            )
        )
    if rule.min_gain is not None:
        out.append(
            check(
                "min_gain",
                gain >= rule.min_gain,
                rule.min_gain,
                gain,
                f"gain {gain:+.4g} ({direction} is better: base {base:.4g} -> {value:.4g}) "
                f"{'>=' if gain >= rule.min_gain else '<'} the {rule.min_gain:g} required",
            )
        )
    if rule.require_significant:
        ok = gain_lo > 0
        out.append(
            check(
                "significant",
                ok,
                0.0,
                [lo, hi],
                f"the {ci_text} {'excludes' if ok else 'does not exclude'} zero on the better side "
                f"(n={n}, {scores.get('better')} documents better, {scores.get('worse')} worse)",
            )
        )
    if rule.max_regression is not None:
        regression = -gain + 0.0  # no -0.0 in reports
        significant = gain_hi < 0
        ok = not (regression > rule.max_regression and significant)
        if regression <= 0:
            reason = f"no regression (delta {delta:+.4g}, {direction} is better)"
        elif regression <= rule.max_regression:
            reason = f"regression {regression:.4g} within the {rule.max_regression:g} allowed"
        elif not significant:
            reason = (
                f"regression {regression:.4g} over the {rule.max_regression:g} allowed, but the {ci_text} "
                "includes zero: not significant"
            )
        else:
            reason = (
                f"regression {regression:.4g} over the {rule.max_regression:g} allowed, and the {ci_text} excludes zero"
            )
        out.append(check("max_regression", ok, rule.max_regression, regression, reason))
    return out


def hash_check(adapter: str, info: dict, folder: str | Path | None) -> Check:
    """The adapter's files must still hash to what was scored."""
    recorded = info.get("sha256")
    path = Path(folder or info.get("path") or "")
    if not recorded:
        return Check(adapter, None, "adapter_sha256", FAIL, None, None, "eval.json records no sha256 for it")
    if not str(path) or not path.is_dir():
        return Check(
            adapter,
            None,
            "adapter_sha256",
            FAIL,
            recorded,
            None,
            f"adapter files not found at {path} (pass --adapter {adapter}=DIR where they are now)",
        )
    now = adapter_sha256(path)
    ok = now == recorded
    return Check(
        adapter,
        None,
        "adapter_sha256",
        PASS if ok else FAIL,
        recorded,
        now,
        f"files in {path} hash to what was scored"
        if ok
        else f"files in {path} changed since they were scored: sha256 {now[:12]}... != {recorded[:12]}...",
    )


def budget_checks(adapter: str, budgets: Budgets, figures: dict | None) -> list[Check]:
    """One check per budget the policy sets (``budget.<name>``), at every bench level that sent ``adapter``."""
    wanted = [
        (k, v)
        for k, v in (
            ("p99_latency_ratio", budgets.p99_latency_ratio),
            ("output_tokens_per_s_ratio", budgets.output_tokens_per_s_ratio),
        )
        if v is not None
    ]
    if not wanted:
        return []
    if figures is None:
        status = FAIL if budgets.require_bench else SKIP
        return [
            Check(
                adapter,
                None,
                f"budget.{k}",
                status,
                v,
                None,
                "no --bench result given" + (" and the policy requires one" if budgets.require_bench else ""),
            )
            for k, v in wanted
        ]
    out = []
    levels = {label: per for label, per in figures.items() if adapter in per}
    if not levels:
        return [
            Check(adapter, None, f"budget.{k}", FAIL, v, None, f"the bench run has no requests for {adapter!r}")
            for k, v in wanted
        ]
    for label, per in levels.items():
        base = per.get(BASE)
        for key, limit in wanted:
            metric = "p99_latency_s" if key == "p99_latency_ratio" else "output_tokens_per_s"
            a, b = _num(per[adapter].get(metric)), _num((base or {}).get(metric))
            if base is None or a is None or not b:
                out.append(
                    Check(
                        adapter,
                        None,
                        f"budget.{key}",
                        FAIL,
                        limit,
                        None,
                        f"{label}: no {metric} for {'the base model' if base is None or not b else adapter}",
                    )
                )
                continue
            ratio = a / b
            ok = ratio <= limit if key == "p99_latency_ratio" else ratio >= limit
            cmp = ("<=" if ok else ">") if key == "p99_latency_ratio" else (">=" if ok else "<")
            out.append(
                Check(
                    adapter,
                    None,
                    f"budget.{key}",
                    PASS if ok else FAIL,
                    limit,
                    ratio,
                    f"{label}: {metric} {a:.4g} vs base {b:.4g}: ratio {ratio:.3f} {cmp} {limit:g}",
                )
            )
    return out


@dataclass
class GateResult:
    verdict: str
    checks: list[Check]
    adapters: dict[str, dict]
    policy_sha256: str
    eval_sha256: str

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.verdict == PASS else EXIT_FAIL

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
            "adapters": self.adapters,
            "policy_sha256": self.policy_sha256,
            "eval_sha256": self.eval_sha256,
        }


def judge(
    evaluation: dict, policy: Policy, figures: dict | None, adapter_dirs: dict[str, str | Path]
) -> tuple[str, list[Check], dict[str, dict]]:
    """The verdict, every check, and each adapter's ``{sha256, verdict}`` as gate.json records them."""
    confidence = float((evaluation.get("bootstrap") or {}).get("confidence") or 0.95)
    checks: list[Check] = []
    adapters: dict[str, dict] = {}
    if not evaluation["adapters"]:
        checks.append(Check("", None, "adapters", FAIL, None, 0, "the eval file scored no adapter"))
    for name, info in evaluation["adapters"].items():
        info = info if isinstance(info, dict) else {}
        mine = [hash_check(name, info, adapter_dirs.get(name))]
        for metric, rule in policy.metrics.items():
            mine += metric_checks(name, metric, rule, evaluation["metrics"].get(metric), policy, confidence)
        mine += budget_checks(name, policy.budgets, figures)
        checks += mine
        adapters[name] = {
            "sha256": info.get("sha256"),
            "verdict": FAIL if any(c.status == FAIL for c in mine) else PASS,
        }
    verdict = (
        PASS
        if adapters
        and all(a["verdict"] == PASS for a in adapters.values())
        and not any(c.status == FAIL for c in checks)
        else FAIL
    )
    return verdict, checks, adapters
