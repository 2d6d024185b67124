"""``loraship gate``: turn eval scores (and optionally a bench run) and a policy into pass or fail.

    loraship gate --eval runs/eval/eval.json --policy evaluation/policies/default.yaml --out runs/gate
    loraship gate --eval runs/eval/eval.json --policy ... --bench runs/bench/b8/bench.json --out runs/gate

The gate fails closed: a metric the policy names but the eval lacks, a value that is not a
number, too few samples, an adapter whose files no longer hash to what was scored, or a budget
the bench run cannot show, each fails with a reason. It writes ``gate.json`` (read by the rollout
code: keep its top-level shape), ``gate.md`` (a summary with each adapter's worst regressed
samples) and ``junit.xml`` (one test case per check, for CI systems).

Exit codes: 0 pass, 1 fail, 2 invalid input (an unreadable or malformed eval, policy or bench file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraship.core.hashing import adapter_sha256, file_sha256

BASE = "__base__"
DEFAULT_POLICY = Path(__file__).resolve().parent / "policies" / "default.yaml"
PASS, FAIL, SKIP = "pass", "fail", "skip"
EXIT_PASS, EXIT_FAIL, EXIT_INVALID = 0, 1, 2
WORST_SAMPLES = 3


class GateInputError(Exception):
    """An input the gate cannot judge from (exit code 2); the message lists every problem."""


# ---- policy ------------------------------------------------------------------------------------


@dataclass
class MetricRule:
    """What one metric must show for each adapter; every field is optional.

    "Gain" is the adapter's improvement over the base in the metric's good direction (a drop in
    a lower-is-better metric such as reference_loss is a positive gain); "CI" is the eval's
    paired bootstrap interval of the delta.
    """

    min_samples: int | None = None
    """Fewer scored documents than this fails; unset: the policy's top-level min_samples."""
    floor: float | None = None
    """The adapter's value must be >= this (absolute)."""
    ceiling: float | None = None
    """The adapter's value must be <= this (absolute)."""
    min_gain: float | None = None
    """The gain's point estimate must be >= this."""
    require_significant: bool = False
    """The CI must exclude zero on the better side: the gain is real at this sample size."""
    max_regression: float | None = None
    """A loss larger than this fails, but only when the CI excludes zero on the worse side."""


@dataclass
class Budgets:
    """Performance budgets against the base model, read from a ``loraship bench`` result."""

    p99_latency_ratio: float | None = None
    """Adapter p99 end-to-end latency / base p99 must be <= this, at every bench level."""
    output_tokens_per_s_ratio: float | None = None
    """Adapter per-request output tokens/s / the base's must be >= this, at every bench level."""
    require_bench: bool = False
    """Without --bench, fail the budgets instead of skipping them."""


@dataclass
class Policy:
    version: int = 1
    min_samples: int = 10
    """Default minimum number of scored documents for every metric."""
    metrics: dict[str, MetricRule] = field(default_factory=dict)
    budgets: Budgets = field(default_factory=Budgets)


def _check_fields(cls, raw: Any, where: str, problems: list[str]) -> dict:
    """Known keys with values of the right type; every problem appended with its dotted key."""
    if not isinstance(raw, dict):
        problems.append(f"{where or 'policy'}: expected a mapping, got {type(raw).__name__}")
        return {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            problems.append(f"{name}: unknown key; known: {', '.join(sorted(known))}")
            continue
        hint = str(known[key].type)
        if "dict" in hint or "Budgets" in hint:
            kwargs[key] = value
        elif "bool" in hint:
            if not isinstance(value, bool):
                problems.append(f"{name}: expected true or false, got {value!r}")
            else:
                kwargs[key] = value
        elif "int" in hint:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                problems.append(f"{name}: expected a non-negative integer, got {value!r}")
            else:
                kwargs[key] = value
        elif "float" in hint:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                problems.append(f"{name}: expected a number, got {value!r}")
            else:
                kwargs[key] = None if value is None else float(value)
    return kwargs


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise one GateInputError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GateInputError(f"cannot read policy {path}: {exc}") from None
    problems: list[str] = []
    top = _check_fields(Policy, raw if raw is not None else {}, "", problems)
    if top.get("min_samples", 10) is None:
        problems.append("min_samples: expected a non-negative integer, got None")
    if top.get("version", 1) != 1:
        problems.append(f"version: this gate reads policy version 1, got {top['version']}")
    metrics = {}
    raw_metrics = top.get("metrics", {})
    if not isinstance(raw_metrics, dict) or not raw_metrics:
        problems.append("metrics: expected a non-empty mapping of metric name to rules")
        raw_metrics = {}
    for name, rules in raw_metrics.items():
        rule = MetricRule(**_check_fields(MetricRule, rules if rules is not None else {}, f"metrics.{name}", problems))
        for key in ("min_gain", "max_regression"):
            value = getattr(rule, key)
            if value is not None and value < 0:
                problems.append(f"metrics.{name}.{key}: must be >= 0, got {value}")
        metrics[name] = rule
    budgets = Budgets(**_check_fields(Budgets, top.get("budgets") or {}, "budgets", problems))
    for key in ("p99_latency_ratio", "output_tokens_per_s_ratio"):
        value = getattr(budgets, key)
        if value is not None and value <= 0:
            problems.append(f"budgets.{key}: must be > 0, got {value}")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise GateInputError(f"{path}: {len(problems)} problem(s):\n{lines}")
    return Policy(
        version=top.get("version", 1), min_samples=top.get("min_samples", 10), metrics=metrics, budgets=budgets
    )


# ---- inputs ------------------------------------------------------------------------------------


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


# ---- checks ------------------------------------------------------------------------------------


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
    wanted = [
        (k, getattr(budgets, k))
        for k in ("p99_latency_ratio", "output_tokens_per_s_ratio")
        if getattr(budgets, k) is not None
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


# ---- the gate ----------------------------------------------------------------------------------


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
    result = GateResult(verdict, checks, adapters, file_sha256(policy_path), file_sha256(eval_path))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gate.json", json.dumps(result.to_dict(), indent=2) + "\n")
    _write(out / "gate.md", gate_markdown(result, evaluation, Path(eval_path).parent, policy, policy_path))
    _write(out / "junit.xml", junit_xml(result))
    return result


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- reports -----------------------------------------------------------------------------------


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
