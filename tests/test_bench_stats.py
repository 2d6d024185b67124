"""The benchmark's statistics on hand-made records: exact values, no timing."""

from __future__ import annotations

from collections import Counter

import pytest

from loraship.evaluation.bench.client import RequestRecord
from loraship.evaluation.bench.run import BenchConfig, BenchError, parse_slo
from loraship.evaluation.bench.stats import adapter_cost, cold_warm, distribution, goodput, meets_slo, summarize_level
from loraship.evaluation.bench.workload import Workload, WorkloadError, load_prompts, mix_weights


def rec(e2e=1.0, ttft=None, tokens=11, adapter="__base__", status=200, itl=(), phase="measure", stream=None):
    return RequestRecord(
        index=0,
        phase=phase,
        level="concurrency=1",
        adapter=adapter,
        stream=ttft is not None if stream is None else stream,
        status=status,
        ok=status == 200,
        e2e=e2e,
        ttft=ttft,
        output_tokens=tokens if status == 200 else None,
        input_tokens=5 if status == 200 else None,
        itl=list(itl),
    )


def test_distribution_is_numpys_linear_percentiles():
    d = distribution(range(1, 101))
    assert d == {
        "n": 100,
        "mean": 50.5,
        "min": 1.0,
        "max": 100.0,
        "p50": 50.5,
        "p90": pytest.approx(90.1),
        "p95": pytest.approx(95.05),
        "p99": pytest.approx(99.01),
    }
    assert distribution([None, 2.0]) == {
        "n": 1,
        "mean": 2.0,
        "min": 2.0,
        "max": 2.0,
        "p50": 2.0,
        "p90": 2.0,
        "p95": 2.0,
        "p99": 2.0,
    }
    assert distribution([])["p99"] is None and distribution([])["n"] == 0


def test_tpot_is_decode_time_per_token_after_the_first():
    assert rec(e2e=2.0, ttft=1.0, tokens=11).tpot == pytest.approx(0.1)
    assert rec(e2e=2.0, ttft=None).tpot is None  # not streamed
    assert rec(e2e=2.0, ttft=1.0, tokens=1).tpot is None  # one token: no decode step
    assert rec(e2e=2.0, ttft=1.0, status=500).tpot is None


def test_level_summary_counts_errors_apart_and_throughput_over_wall_time():
    records = [rec(e2e=1.0), rec(e2e=3.0), rec(e2e=99.0, status=500), rec(e2e=0.1, status="connection_error")]
    s = summarize_level(records, wall_s=4.0)
    assert (s["requests"], s["ok"], s["errors"], s["error_rate"]) == (4, 2, 2, 0.5)
    assert s["status_counts"] == {"200": 2, "500": 1, "connection_error": 1}
    assert s["latency"]["e2e_s"]["mean"] == 2.0 and s["latency"]["e2e_s"]["max"] == 3.0  # the 99 s error is out
    assert (s["requests_per_s"], s["output_tokens_per_s"], s["input_tokens_per_s"]) == (0.5, 5.5, 2.5)
    assert s["goodput"] is None and s["adapter_cost"] == {}


def test_itl_pools_every_gap_of_every_request():
    s = summarize_level([rec(e2e=1, ttft=0.5, itl=[0.1, 0.2]), rec(e2e=1, ttft=0.5, itl=[0.3])], wall_s=1.0)
    assert s["latency"]["itl_s"]["n"] == 3 and s["latency"]["itl_s"]["p50"] == pytest.approx(0.2)


def test_goodput_needs_every_slo_met():
    records = [
        rec(e2e=1.0, ttft=0.2, tokens=11),  # tpot 80 ms
        rec(e2e=1.0, ttft=0.6, tokens=11),  # ttft too slow
        rec(e2e=3.0, ttft=0.2, tokens=11),  # e2e and tpot too slow
        rec(e2e=0.1, status=500),
    ]
    g = goodput(records, {"ttft": 500, "tpot": 100, "e2e": 2000}, wall_s=2.0)
    assert (g["good"], g["fraction"], g["requests_per_s"]) == (1, 0.25, 0.5)
    assert goodput(records, {}, 2.0) is None
    # TTFT is not measured without streaming: goodput is unknown, not zero.
    g = goodput([rec(e2e=1.0)], {"ttft": 500}, 1.0)
    assert g["requests_per_s"] is None and "needs --stream" in g["note"]
    assert meets_slo(rec(e2e=1.0, ttft=0.2, tokens=1), {"tpot": 1}) is True  # no TPOT to miss


def test_adapter_cost_is_the_ratio_over_base_in_the_same_level():
    records = [
        rec(e2e=1.0, adapter="__base__"),
        rec(e2e=3.0, adapter="__base__"),
        rec(e2e=3.0, adapter="faq"),
        rec(e2e=5.0, adapter="faq"),
    ]
    s = summarize_level(records, wall_s=2.0)
    assert s["adapters"]["faq"]["requests"] == 2 and s["adapters"]["faq"]["output_tokens_per_s"] == 11.0
    assert s["adapter_cost"]["faq"]["e2e_p50_ratio"] == 2.0
    assert s["adapter_cost"]["faq"]["e2e_mean_ratio"] == 2.0
    assert s["adapter_cost"]["faq"]["ttft_p50_ratio"] is None
    assert adapter_cost({"faq": s["adapters"]["faq"]}) == {}  # no base in the level: no ratio


def test_cold_warm_takes_the_first_request_against_the_median_of_the_rest():
    probe = [
        rec(e2e=9.0, adapter="faq", phase="probe"),
        rec(e2e=1.0, adapter="faq", phase="probe"),
        rec(e2e=3.0, adapter="faq", phase="probe"),
        rec(e2e=5.0, ttft=4.0, adapter="s", phase="probe"),
        rec(e2e=5.0, ttft=1.0, adapter="s", phase="probe"),
    ]
    cw = cold_warm(probe)
    assert cw["faq"] == {
        "metric": "e2e",
        "cold_s": 9.0,
        "warm_s": 2.0,
        "cold_over_warm": 4.5,
        "cold_status": 200,
        "warm_samples": 2,
    }
    assert cw["s"]["metric"] == "ttft" and cw["s"]["cold_over_warm"] == 4.0


def test_round_robin_and_seeded_mixes():
    w = Workload(["p1", "p2", "p3"], ["a", "b"], "round-robin", seed=1)
    items = [next(it) for it in [w.items("x")] for _ in range(6)]
    assert [i.adapter for i in items] == ["a", "b"] * 3
    assert Counter(i.prompt for i in items) == {"p1": 2, "p2": 2, "p3": 2}
    assert {i.max_new_tokens for i in items} == {64}  # one length unless told otherwise
    assert {(i.prompt_tokens, i.prefix) for i in items} == {(None, None)}  # no tokenizer, no prefixes
    skewed = Workload(["p"], ["a", "b", "c"], "skewed", seed=3)
    draws = [i.adapter for it in [skewed.items("lvl")] for i in (next(it) for _ in range(3000))]
    again = [i.adapter for it in [skewed.items("lvl")] for i in (next(it) for _ in range(3000))]
    assert draws == again
    shares = Counter(draws)
    assert shares["a"] > shares["b"] > shares["c"] > 0
    assert mix_weights(["a", "b", "c"], "skewed") == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    with pytest.raises(WorkloadError, match="unknown --mix"):
        Workload(["p"], ["a"], "zipf")


def test_output_lengths_are_drawn_per_request_seeded_and_leave_the_adapter_draws_alone():
    mixed = Workload(["p"], ["a", "b"], "uniform", seed=5, lengths=[16, 32, 64, 128])
    one = Workload(["p"], ["a", "b"], "uniform", seed=5)
    drawn = [next(it) for it in [mixed.items("rate=1")] for _ in range(400)]
    assert drawn == [next(it) for it in [mixed.items("rate=1")] for _ in range(400)]
    assert Counter(i.max_new_tokens for i in drawn).keys() == {16, 32, 64, 128}
    assert min(Counter(i.max_new_tokens for i in drawn).values()) > 60  # uniform over the four
    unmixed = [next(it) for it in [one.items("rate=1")] for _ in range(400)]
    assert [i.adapter for i in drawn] == [i.adapter for i in unmixed]


def test_prompts_default_to_the_faq_questions_and_read_jsonl(tmp_path):
    assert load_prompts()[0] == "What is Amazon SageMaker?"
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "Q1?", "response": "A1"}\n{"instruction": "Q2?", "response": "A2"}\n')
    assert load_prompts(path) == ["Q1?", "Q2?"]


def test_config_lists_every_problem_at_once(tmp_path):
    cfg = BenchConfig(
        url="localhost:8080", out=tmp_path, concurrency=[0], rate=[1.0], max_new_tokens=0, slo_ms={"ttft": 5.0}
    )
    problems = cfg.problems()
    assert len(problems) == 6
    assert parse_slo("ttft=500, e2e=2000") == {"ttft": 500.0, "e2e": 2000.0}
    with pytest.raises(BenchError):
        parse_slo("ttft")
    with pytest.raises(BenchError):
        parse_slo("ttft=fast")
