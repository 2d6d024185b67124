"""The gate policy: what each metric must show, and the performance budgets (evaluation/policies/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, StrictBool, StrictFloat, StrictInt, model_validator

from loraship.core.errors import LorashipError
from loraship.handler.settings import Settings, validate

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "policies" / "default.yaml"


class GateInputError(LorashipError):
    """An input the gate cannot judge from (exit code 2); the message lists every problem."""


class _Section(Settings):
    """Part of a policy file; left empty, it takes every default."""

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, data):
        # YAML reads an empty file, or `rougeL:` with nothing under it, as null (such a metric gets
        # only the checks every metric gets: present, min_samples, finite).
        return {} if data is None else data


class MetricRule(_Section):
    """What one metric must show for each adapter; every field is optional.

    "Gain" is the adapter's improvement over the base in the metric's good direction (a drop in
    a lower-is-better metric such as reference_loss is a positive gain); "CI" is the eval's
    paired bootstrap interval of the delta.
    """

    min_samples: StrictInt | None = Field(None, ge=0)
    """Fewer scored documents than this fails; unset: the policy's top-level min_samples."""
    floor: StrictFloat | None = Field(None, allow_inf_nan=False)
    """The adapter's value must be >= this (absolute)."""
    ceiling: StrictFloat | None = Field(None, allow_inf_nan=False)
    """The adapter's value must be <= this (absolute)."""
    min_gain: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    """The gain's point estimate must be >= this."""
    require_significant: StrictBool = False
    """The CI must exclude zero on the better side: the gain is real at this sample size."""
    max_regression: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    """A loss larger than this fails, but only when the CI excludes zero on the worse side."""


class Budgets(_Section):
    """Performance budgets against the base model, read from a ``loraship bench`` result."""

    p99_latency_ratio: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False)
    """Adapter p99 end-to-end latency / base p99 must be <= this, at every bench level."""
    output_tokens_per_s_ratio: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False)
    """Adapter per-request output tokens/s / the base's must be >= this, at every bench level."""
    require_bench: StrictBool = False
    """Without --bench, fail the budgets instead of skipping them."""


class Policy(_Section):
    """A policy file (evaluation/policies/*.yaml)."""

    version: Literal[1] = 1
    """The policy format; this gate reads version 1."""
    min_samples: StrictInt = Field(10, ge=0)
    """Default minimum number of scored documents for every metric."""
    metrics: dict[str, MetricRule] = Field(min_length=1)
    """The rules, by metric name as eval.json names it."""
    budgets: Budgets = Field(default_factory=Budgets)
    """Checked against a ``loraship bench`` result."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise one GateInputError listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GateInputError(f"cannot read policy {path}: {exc}") from None
    return validate(Policy, raw, error=GateInputError, what=f"policy {path}")
