"""The gate policy: what each metric must show, and the performance budgets (evaluation/policies/)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "policies" / "default.yaml"


class GateInputError(Exception):
    """An input the gate cannot judge from (exit code 2); the message lists every problem."""


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
