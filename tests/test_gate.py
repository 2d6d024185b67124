"""``loraship gate``: each policy rule, failing closed, bench budgets, outputs and exit codes.

Eval files here are written by hand (no model): one adapter folder, metric entries shaped as
``loraship eval`` writes them, and the default policy or a small one per case.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from loraship.cli import main
from loraship.core.hashing import adapter_sha256
from loraship.evaluation.gate import DEFAULT_POLICY, GateInputError, bench_figures, load_policy, run_gate


def metric(base, value, ci, *, higher=True, n=14, task="loraship_generation"):
    return {
        "task": task,
        "higher_is_better": higher,
        "n": n,
        "base": base,
        "adapters": {
            "faqs": {"value": value, "delta": value - base, "ci": ci, "n": n, "better": 0, "worse": 0, "same": 0}
        },
    }


# The figures measured on the 14 held-out FAQ rows (SmolLM2, one epoch of LoRA r=16).
GOOD = {
    "reference_loss": metric(2.886, 2.741, [-0.195, -0.094], higher=False, task="loraship_reference_loss"),
    "end_marker_rate": metric(3 / 14, 11 / 14, [0.29, 0.86]),
    "rougeL": metric(0.168, 0.190, [-0.01, 0.05]),
    "token_f1": metric(0.20, 0.21, [-0.02, 0.04]),
    "exact_match": metric(0.0, 0.0, [0.0, 0.0]),
}


@pytest.fixture
def adapter(tmp_path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def write_eval(tmp_path: Path, adapter: Path, metrics: dict, **extra) -> Path:
    data = {
        "schema": "loraship.eval/1",
        "mode": "in_process",
        "data": {"path": "faq.csv", "sha256": "ab" * 32},
        "adapters": {"faqs": {"path": str(adapter), "sha256": adapter_sha256(adapter)}},
        "metrics": metrics,
        "bootstrap": {"confidence": 0.95},
        **extra,
    }
    path = tmp_path / "eval" / "eval.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_policy(tmp_path: Path, policy: dict) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def failed(result) -> set[tuple]:
    return {(c.metric, c.check) for c in result.checks if c.status == "fail"}


def test_measured_faq_figures_pass_the_default_policy(tmp_path, adapter):
    result = run_gate(write_eval(tmp_path, adapter, GOOD), DEFAULT_POLICY, tmp_path / "gate")
    assert result.verdict == "pass", failed(result)
    gate = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert list(gate) == ["verdict", "checks", "adapters", "policy_sha256", "eval_sha256"]
    assert gate["adapters"] == {"faqs": {"sha256": adapter_sha256(adapter), "verdict": "pass"}}
    assert {"adapter", "metric", "check", "status", "threshold", "value", "reason"} <= set(gate["checks"][0])
    skipped = [c for c in gate["checks"] if c["status"] == "skip"]
    assert {c["check"] for c in skipped} == {"budget.p99_latency_ratio", "budget.output_tokens_per_s_ratio"}


# Each case: a change to the good figures, and the (metric, check) that must then fail.
CASES = {
    "loss gain too small": (
        {"reference_loss": metric(2.886, 2.876, [-0.02, -0.001], higher=False)},
        ("reference_loss", "min_gain"),
    ),
    "loss gain not significant": (
        {"reference_loss": metric(2.886, 2.80, [-0.2, 0.01], higher=False)},
        ("reference_loss", "significant"),
    ),
    "loss got worse": (
        {"reference_loss": metric(2.886, 3.2, [0.2, 0.4], higher=False)},
        ("reference_loss", "min_gain"),
    ),
    "rambles": ({"end_marker_rate": metric(0.2, 0.3, [0.0, 0.2])}, ("end_marker_rate", "floor")),
    "significant rouge regression": ({"rougeL": metric(0.168, 0.10, [-0.1, -0.03])}, ("rougeL", "max_regression")),
    "too few samples": ({"token_f1": metric(0.2, 0.21, [-0.02, 0.04], n=5)}, ("token_f1", "min_samples")),
    "NaN value": (
        {
            "token_f1": {
                **metric(0.2, 0.21, [-0.02, 0.04]),
                "adapters": {"faqs": {"value": None, "delta": None, "ci": [None, None], "n": 14}},
            }
        },
        ("token_f1", "finite"),
    ),
    "NaN in the CI": ({"rougeL": metric(0.168, 0.19, [float("nan"), 0.05])}, ("rougeL", "finite")),
    "missing metric": ({"rougeL": None}, ("rougeL", "present")),
    "malformed entry": ({"rougeL": "oops"}, ("rougeL", "present")),
    "metric lacks the adapter": ({"rougeL": {**metric(0.1, 0.1, [0, 0]), "adapters": {}}}, ("rougeL", "present")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_fails_closed(tmp_path, adapter, case):
    change, expected = CASES[case]
    metrics = copy.deepcopy(GOOD)
    for name, entry in change.items():
        if entry is None:
            metrics.pop(name)
        else:
            metrics[name] = entry
    result = run_gate(write_eval(tmp_path, adapter, metrics), DEFAULT_POLICY, tmp_path / "gate")
    assert result.verdict == "fail" and result.exit_code == 1
    assert expected in failed(result)
    assert all(c.reason for c in result.checks)


def test_a_regression_fails_only_when_its_ci_excludes_zero(tmp_path, adapter):
    metrics = copy.deepcopy(GOOD)
    metrics["rougeL"] = metric(0.168, 0.10, [-0.15, 0.01])  # a big drop, but noise at this size
    result = run_gate(write_eval(tmp_path, adapter, metrics), DEFAULT_POLICY, tmp_path / "gate")
    check = next(c for c in result.checks if c.metric == "rougeL" and c.check == "max_regression")
    assert check.status == "pass" and "not significant" in check.reason
    assert result.verdict == "pass"


def test_changed_adapter_files_fail_and_a_moved_adapter_can_be_pointed_at(tmp_path, adapter):
    path = write_eval(tmp_path, adapter, GOOD)
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    result = run_gate(path, DEFAULT_POLICY, tmp_path / "gate")
    assert (
        "changed since" in next(c.reason for c in result.checks if c.check == "adapter_sha256")
        and result.verdict == "fail"
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    moved = tmp_path / "moved"
    adapter.rename(moved)
    assert (None, "adapter_sha256") in failed(run_gate(path, DEFAULT_POLICY, tmp_path / "gate"))
    assert run_gate(path, DEFAULT_POLICY, tmp_path / "gate", adapter_dirs={"faqs": moved}).verdict == "pass"


def test_an_eval_without_adapters_fails(tmp_path, adapter):
    path = write_eval(tmp_path, adapter, GOOD)
    data = json.loads(path.read_text())
    data["adapters"] = {}
    path.write_text(json.dumps(data))
    result = run_gate(path, DEFAULT_POLICY, tmp_path / "gate")
    assert result.verdict == "fail" and result.adapters == {}


# ---- policy files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEFAULT_POLICY.parent.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_policy_file_is_valid_and_documents_its_command(path):
    load_policy(path)
    assert path.read_text().startswith("# Run: loraship gate")


def test_default_policy_leans_on_what_is_significant_at_this_size():
    policy = load_policy(DEFAULT_POLICY)
    assert policy.metrics["reference_loss"].require_significant
    assert policy.metrics["end_marker_rate"].floor is not None
    for guard in ("rougeL", "token_f1"):  # guarded against regression only
        rule = policy.metrics[guard]
        assert rule.max_regression is not None and rule.min_gain is None and not rule.require_significant
    assert set(policy.metrics) == set(GOOD)


def test_bad_policy_lists_every_problem(tmp_path):
    path = write_policy(
        tmp_path,
        {
            "min_samples": "ten",
            "metrics": {"rougeL": {"max_regresion": 0.1, "floor": "high"}, "token_f1": {"min_gain": -1}},
            "budgets": {"p99_latency_ratio": 0},
            "extra": 1,
        },
    )
    with pytest.raises(GateInputError) as err:
        load_policy(path)
    text = str(err.value)
    for key in (
        "min_samples",
        "metrics.rougeL.max_regresion",
        "metrics.rougeL.floor",
        "metrics.token_f1.min_gain",
        "budgets.p99_latency_ratio",
        "extra",
    ):
        assert key in text
    assert len(text.split("; ")) == 6  # six problems, each reported once
    with pytest.raises(GateInputError, match="metrics"):
        load_policy(write_policy(tmp_path, {"version": 1}))


def test_custom_policy_ceiling_and_min_samples(tmp_path, adapter):
    policy = write_policy(
        tmp_path, {"min_samples": 20, "metrics": {"reference_loss": {"ceiling": 2.5}, "rougeL": {"min_samples": 10}}}
    )
    result = run_gate(write_eval(tmp_path, adapter, GOOD), policy, tmp_path / "gate")
    assert failed(result) == {("reference_loss", "ceiling"), ("reference_loss", "min_samples")}


# ---- bench budgets -------------------------------------------------------------------------------------


def bench(base_p99=1.0, adapter_p99=1.2, base_tokens=64, adapter_tokens=64, adapters=("__base__", "faqs")):
    figures = {"__base__": (base_p99, base_tokens), "faqs": (adapter_p99, adapter_tokens)}
    per = {
        name: {
            "requests": 8,
            "ok": 8,
            "output_tokens": figures[name][1] * 8,
            "latency": {"e2e_s": {"mean": 1.0, "p50": 1.0, "p99": figures[name][0]}},
        }
        for name in adapters
    }
    return {
        "schema": "loraship.bench/1",
        "levels": [{"label": "concurrency=1", "adapters": per}, {"label": "concurrency=4", "adapters": per}],
    }


def test_bench_figures_are_per_request_speeds():
    figures = bench_figures(bench(adapter_tokens=32))
    assert figures["concurrency=4"]["faqs"] == {"p99_latency_s": 1.2, "output_tokens_per_s": 32.0}
    assert bench_figures({}) == {}


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, None),
        ({"adapter_p99": 2.0}, "budget.p99_latency_ratio"),
        ({"adapter_tokens": 32}, "budget.output_tokens_per_s_ratio"),
        ({"adapters": ("__base__",)}, "budget.p99_latency_ratio"),
        ({"adapters": ("faqs",)}, "budget.output_tokens_per_s_ratio"),
    ],
)
def test_performance_budgets(tmp_path, adapter, kwargs, expected):
    bench_path = tmp_path / "bench.json"
    bench_path.write_text(json.dumps(bench(**kwargs)))
    result = run_gate(write_eval(tmp_path, adapter, GOOD), DEFAULT_POLICY, tmp_path / "gate", bench_path=bench_path)
    budget_fails = {c.check for c in result.checks if c.status == "fail"}
    if expected is None:
        assert result.verdict == "pass" and not budget_fails
        assert sum(c.check.startswith("budget.") and c.status == "pass" for c in result.checks) == 4
    else:
        assert expected in budget_fails and result.verdict == "fail"


def test_required_bench_fails_without_one(tmp_path, adapter):
    policy = write_policy(
        tmp_path,
        {"metrics": {"rougeL": {"max_regression": 0.02}}, "budgets": {"p99_latency_ratio": 1.5, "require_bench": True}},
    )
    result = run_gate(write_eval(tmp_path, adapter, GOOD), policy, tmp_path / "gate")
    assert failed(result) == {(None, "budget.p99_latency_ratio")}


# ---- outputs and the command -----------------------------------------------------------------------------


def test_junit_and_markdown_with_worst_samples(tmp_path, adapter):
    path = write_eval(
        tmp_path,
        adapter,
        {**GOOD, "rougeL": metric(0.5, 0.2, [-0.4, -0.2])},
        samples={"loraship_generation": {"__base__": "samples/g.base.jsonl", "faqs": "samples/g.faqs.jsonl"}},
    )
    samples = path.parent / "samples"
    samples.mkdir()
    for variant, scores in (("base", [0.9, 0.5, 0.1]), ("faqs", [0.1, 0.5, 0.2])):
        samples.joinpath(f"g.{variant}.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "doc_id": i,
                        "rougeL": s,
                        "response": f"{variant} answer {i}",
                        "doc": {"instruction": f"question {i}", "response": "reference", "row": i + 1},
                    }
                )
                + "\n"
                for i, s in enumerate(scores)
            )
        )
    result = run_gate(path, DEFAULT_POLICY, tmp_path / "gate")
    assert result.verdict == "fail"
    suite = ET.parse(tmp_path / "gate" / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.checks)
    assert int(suite.get("failures")) == sum(c.status == "fail" for c in result.checks) >= 1
    assert any(c.find("failure") is not None and c.get("name") == "rougeL.max_regression" for c in cases)
    md = (tmp_path / "gate" / "gate.md").read_text()
    assert "# Gate: FAIL" in md and "Worst regressed samples" in md
    assert "question 0" in md and "base answer 0" in md and "faqs answer 0" in md
    assert "question 1" not in md  # a tie is no regression


def test_the_report_the_gate_writes_is_the_one_it_reads(tmp_path, adapter):
    from loraship.evaluation.gate import failed_checks, load_report

    bad = copy.deepcopy(GOOD)
    bad["reference_loss"] = metric(2.886, 3.0, [0.05, 0.2], higher=False)
    assert main(["gate", "--eval", str(write_eval(tmp_path, adapter, bad)), "--out", str(tmp_path / "g")]) == 1
    report = load_report(tmp_path / "g" / "gate.json")
    assert report["verdict"] == "fail" and any(name.startswith("faqs/reference_loss") for name in failed_checks(report))


def test_cli_exit_codes(tmp_path, adapter, capsys):
    good = write_eval(tmp_path, adapter, GOOD)
    assert main(["gate", "--eval", str(good), "--out", str(tmp_path / "g1")]) == 0
    assert "PASS" in capsys.readouterr().out
    bad = copy.deepcopy(GOOD)
    bad["reference_loss"] = metric(2.886, 3.0, [0.05, 0.2], higher=False)
    assert main(["gate", "--eval", str(write_eval(tmp_path, adapter, bad)), "--out", str(tmp_path / "g2")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["gate", "--eval", str(tmp_path / "nope.json"), "--out", str(tmp_path / "g3")]) == 2
    broken_policy = tmp_path / "p.yaml"
    broken_policy.write_text("metrics: [oops")
    assert main(["gate", "--eval", str(good), "--policy", str(broken_policy), "--out", str(tmp_path / "g4")]) == 2
    not_eval = tmp_path / "other.json"
    not_eval.write_text(json.dumps({"verdict": "pass"}))
    assert main(["gate", "--eval", str(not_eval), "--out", str(tmp_path / "g5")]) == 2
    assert "loraship.eval/1" in capsys.readouterr().err
    assert not (tmp_path / "g3").exists()
    # A malformed flag is bad input (2), not a failed verdict (1).
    assert main(["gate", "--eval", str(good), "--adapter", "bad", "--out", str(tmp_path / "g6")]) == 2
    assert "--adapter takes KEY=VALUE, got 'bad'" in capsys.readouterr().err
