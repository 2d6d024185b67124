"""Each workload option of ``loraship bench`` changes the distribution it names, as bench.json records it.

Every run is seeded, so what the options draw (prompt lengths, output lengths, prefixes, arrival gaps) is the
same on every machine; the bounds below hold for these seeds and are far from the other settings' values.
Prompt lengths are counted with a real tokenizer: a byte-level BPE trained on the FAQ (``tiny_models``, as
the tiny test models have), and once the embedded default model's own. Nothing here asserts a duration: the
one timing relation checked (a worker's first request is sent no earlier than its ramp-up start) is a lower
bound the client enforces by sleeping.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from test_bench import FakeLMI, bench, level
from tiny_models import train_tokenizer

from loraship.cli import main
from loraship.evaluation.bench.workload import load_rows


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer().save_pretrained(folder)
    return str(folder)


def count(tokenizer: str, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer).encode(text, add_special_tokens=False))


def realised(result: dict, label: str) -> dict:
    return level(result, label)["workload"]


def test_synthetic_prompt_lengths_follow_mean_and_stddev(tmp_path, tokenizer):
    runs = {}
    with FakeLMI(defaults="tokens=asked prompt_tokens=words") as fake:
        for name, mean, sd in (("sd10", 40, 10), ("sd0", 40, 0), ("mean80", 80, 10)):
            code, result, records = bench(
                fake.url,
                tmp_path / name,
                "--tokenizer",
                tokenizer,
                "--input-tokens",
                str(mean),
                "--input-tokens-stddev",
                str(sd),
                "--max-new-tokens",
                "4",
                "--rate",
                "500",
                "--requests",
                "120",
                "--seed",
                "7",
            )
            assert code == 0
            runs[name] = (result, records, [b["inputs"] for b in fake.bodies])
            fake.bodies.clear()
    result, records, prompts = runs["sd10"]
    params = result["workload"]["parameters"]
    assert params["input_tokens"] == {"kind": "normal", "mean": 40.0, "stddev": 10.0, "min": 1}
    assert params["prompts"] == "synthetic" and params["tokenizer"]["path"] == tokenizer
    w = realised(result, "rate=500")
    assert 37 <= w["prompt_tokens"]["mean"] <= 43 and 8 <= w["prompt_tokens"]["stddev"] <= 12
    # The client's count is the tokenizer's: recount what was sent.
    assert sorted(r["counted_prompt_tokens"] for r in records) == sorted(count(tokenizer, p) for p in prompts)
    # Synthetic words are one token each: the server's count (the fake reports words) agrees.
    assert w["server_input_tokens"]["mean"] == pytest.approx(w["prompt_tokens"]["mean"])
    assert result["workload"]["realised"]["prompt_tokens"]["n"] == 120
    fixed = realised(runs["sd0"][0], "rate=500")["prompt_tokens"]
    assert fixed["min"] == fixed["max"] == 40 and fixed["stddev"] == 0
    assert 76 <= realised(runs["mean80"][0], "rate=500")["prompt_tokens"]["mean"] <= 84
    assert "synthetic prompts of 40 ± 10 tokens" in (tmp_path / "sd10" / "summary.md").read_text()
    assert "## Workload as sent" in (tmp_path / "sd10" / "summary.md").read_text()


def test_the_default_models_tokenizer_makes_exact_lengths(tmp_path):
    with FakeLMI(defaults="tokens=asked") as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--tokenizer",
            "default",
            "--input-tokens",
            "25",
            "--max-new-tokens",
            "4",
            "--concurrency",
            "4",
            "--requests",
            "12",
        )
        prompts = [b["inputs"] for b in fake.bodies]
    assert code == 0
    assert result["workload"]["parameters"]["tokenizer"]["spec"] == "default"
    assert {r["counted_prompt_tokens"] for r in records} == {25}
    from loraship.core.models import resolve_model

    assert {count(resolve_model("default"), p) for p in prompts} == {25}


def test_output_lengths_fixed_or_drawn_from_a_normal_distribution(tmp_path):
    runs = {}
    with FakeLMI(defaults="tokens=asked") as fake:
        for name, extra in (("fixed", []), ("normal", ["--max-new-tokens-stddev", "8"])):
            code, runs[name], records = bench(
                fake.url, tmp_path / name, "--max-new-tokens", "32", *extra, "--rate", "500", "--requests", "150",
                "--seed", "3",
            )  # fmt: skip
            assert code == 0 and level(runs[name], "rate=500")["ok"] == 150
            assert all(r["output_tokens"] == r["max_new_tokens"] for r in records)  # each got its own length
    fixed = realised(runs["fixed"], "rate=500")
    assert fixed["max_new_tokens"]["counts"] == {"32": 150} and fixed["output_tokens"]["stddev"] == 0
    normal = realised(runs["normal"], "rate=500")
    assert runs["normal"]["workload"]["parameters"]["output_tokens"] == {
        "kind": "normal",
        "mean": 32,
        "stddev": 8.0,
        "min": 1,
    }
    assert 30 <= normal["max_new_tokens"]["mean"] <= 34 and 6.5 <= normal["max_new_tokens"]["stddev"] <= 9.5
    assert normal["output_tokens"]["mean"] == pytest.approx(normal["max_new_tokens"]["mean"])  # each got its own
    assert normal["output_tokens_from"] == {"server": 150}


def sharegpt(tmp_path, rows) -> str:
    path = tmp_path / "sharegpt.jsonl"
    lines = [
        {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        for i, (q, a) in enumerate(rows)
    ]
    lines.append({"id": "alone", "conversations": [{"from": "human", "value": "no answer here"}]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_sharegpt_conversations_and_their_answers_lengths(tmp_path, tokenizer):
    rows = [
        ("delay=0 What is SageMaker?", "Amazon SageMaker is a fully managed service."),
        ("delay=0 How do I train?", "Use a training job with your data in Amazon S3 and pick an instance type."),
        ("delay=0 Is there a free tier?", "Yes."),
    ]
    path = sharegpt(tmp_path, rows)
    with FakeLMI(defaults="tokens=asked") as fake:
        code, result, records = bench(
            fake.url,
            tmp_path / "out",
            "--dataset",
            path,
            "--tokenizer",
            tokenizer,
            "--output-lengths-from-dataset",
            "--concurrency",
            "1",
            "--requests",
            "9",
        )
        sent = [(b["inputs"], b["parameters"]["max_new_tokens"]) for b in fake.bodies]
    assert code == 0
    params = result["workload"]["parameters"]
    assert params["dataset_format"] == "sharegpt" and params["output_tokens"] == {"kind": "dataset"}
    answers = {q: count(tokenizer, a) for q, a in rows}
    assert len(set(answers.values())) == 3  # three different lengths, each asked for with its own question
    assert Counter(sent) == {(q, n): 3 for q, n in answers.items()}  # the one-turn conversation is left out
    assert realised(result, "concurrency=1")["max_new_tokens"]["counts"] == {
        str(n): 3 for n in sorted(answers.values())
    }
    assert all(r["output_tokens"] == r["max_new_tokens"] for r in records)


def test_shared_prefixes_are_each_reused_and_counted_in_the_prompt(tmp_path, tokenizer):
    runs = {}
    with FakeLMI(defaults="tokens=asked") as fake:
        for name, extra in (("prefixed", ["--prefixes", "3", "--prefix-tokens", "20"]), ("plain", [])):
            code, runs[name], _ = bench(
                fake.url, tmp_path / name, "--tokenizer", tokenizer, "--input-tokens", "10", *extra,
                "--max-new-tokens", "2", "--concurrency", "3", "--requests", "30", "--seed", "5",
            )  # fmt: skip
            assert code == 0
            runs[name + "_prompts"] = [b["inputs"] for b in fake.bodies]
            fake.bodies.clear()
    w = realised(runs["prefixed"], "concurrency=3")
    assert w["prefixes"] == {"0": 10, "1": 10, "2": 10}  # 30 requests, each prefix used once in every three
    assert w["prompt_tokens"]["min"] == w["prompt_tokens"]["max"] == 30  # 20 of prefix + 10 of its own
    assert runs["prefixed"]["workload"]["parameters"]["prefixes"] == 3
    assert runs["prefixed"]["workload"]["parameters"]["prefix_tokens"] == 20

    def heads(prompts):
        return Counter(" ".join(p.split()[:20]) for p in prompts)

    assert sorted(heads(runs["prefixed_prompts"]).values()) == [10, 10, 10]
    assert len(heads(runs["plain_prompts"])) == 30  # without prefixes no two prompts start alike
    assert realised(runs["plain"], "concurrency=3")["prefixes"] == {}


def test_burstiness_shapes_the_gaps_between_arrivals(tmp_path):
    cv = {}
    with FakeLMI(defaults="delay=0") as fake:
        for b in ("0.25", "1", "4"):
            code, result, records = bench(
                fake.url, tmp_path / b, "--rate", "400", "--burstiness", b, "--requests", "300", "--max-new-tokens",
                "2", "--seed", "11",
            )  # fmt: skip
            assert code == 0
            gaps = realised(result, "rate=400")["planned_gaps_s"]
            assert 0.8 / 400 <= gaps["mean"] <= 1.25 / 400  # the mean gap is 1/rate whatever the shape
            cv[b] = gaps["cv"]
            assert result["workload"]["parameters"]["arrivals"]["burstiness"] == float(b)
            planned = sorted(r["planned_at"] for r in records)
            assert planned[0] == 0 and all(r["sent_at"] is not None for r in records)
    # A gamma gap's coefficient of variation is 1/sqrt(shape): 2, 1 and 0.5.
    assert 1.5 <= cv["0.25"] <= 2.6 and 0.85 <= cv["1"] <= 1.15 and 0.4 <= cv["4"] <= 0.6


def test_max_concurrency_caps_the_requests_in_flight_of_an_open_loop(tmp_path):
    with FakeLMI(defaults="delay=0.5") as fake:
        runs = {}
        for name, extra in (("capped", ["--max-concurrency", "2"]), ("open", [])):
            code, runs[name], records = bench(
                fake.url, tmp_path / name, "--rate", "100", "--requests", "16", *extra, "--max-new-tokens", "2",
            )  # fmt: skip
            assert code == 0 and level(runs[name], "rate=100")["ok"] == 16
            if name == "capped":
                # No more than two intervals [sent, sent + e2e] overlap at any moment.
                events = sorted([(r["sent_at"], 1) for r in records] + [(r["sent_at"] + r["e2e"], -1) for r in records])
                depth = peak = 0
                for _, step in sorted(events, key=lambda e: (e[0], e[1])):
                    depth += step
                    peak = max(peak, depth)
                assert peak <= 2
    assert level(runs["capped"], "rate=100")["max_in_flight"] == 2
    assert realised(runs["capped"], "rate=100")["max_in_flight"] == 2
    assert runs["capped"]["workload"]["parameters"]["arrivals"]["max_concurrency"] == 2
    # Without the cap the 16 arrivals (0.15 s of schedule) all go out before the first 0.5 s reply.
    assert level(runs["open"], "rate=100")["max_in_flight"] > 2


def test_ramp_up_raises_the_rate_and_staggers_the_workers(tmp_path):
    runs = {}
    with FakeLMI(defaults="delay=0") as fake:
        for name, extra in (("ramp", ["--ramp-up", "2"]), ("flat", [])):
            code, runs[name], _ = bench(
                fake.url, tmp_path / name, "--rate", "40", "--requests", "100", *extra, "--max-new-tokens", "2",
                "--seed", "2",
            )  # fmt: skip
            assert code == 0
    with FakeLMI(defaults="delay=0.3") as fake:  # slow enough that worker 0 alone cannot send all 12 first
        code, closed, records = bench(
            fake.url, tmp_path / "closed", "--concurrency", "4", "--ramp-up", "1", "--requests", "12",
            "--max-new-tokens", "2",
        )  # fmt: skip
        assert code == 0
    ramp = realised(runs["ramp"], "rate=40")["ramp_up"]
    flat = [r for r in (tmp_path / "flat" / "requests.jsonl").read_text().splitlines()]
    flat_in_2s = sum(json.loads(r)["planned_at"] < 2 for r in flat)
    # The rate rises from 0 to 40/s over 2 s: about 40 arrivals in that time instead of about 80.
    assert 30 <= ramp["planned_in_ramp"] <= 50 and 65 <= flat_in_2s <= 95
    starts = realised(closed, "concurrency=4")["ramp_up"]["planned_starts_s"]
    assert starts == [0.0, 0.25, 0.5, 0.75]
    first = min(r["sent_at"] for r in records)
    for r in records:
        if r["planned_at"] is not None:  # a worker's first request waits for its start
            assert r["sent_at"] - first >= r["planned_at"] - 0.01


def test_data_set_formats(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q1"},
                                 {"role": "assistant", "content": "A1"}]}) + "\n"
        + json.dumps({"prompt": "Q2", "completion": "A2"}) + "\n"
    )  # fmt: skip
    rows, kind = load_rows(chat)
    assert [(r.prompt, r.reference) for r in rows] == [("Q1", "A1"), ("Q2", "A2")] and kind == "messages+prompt"
    array = tmp_path / "sharegpt.json"
    array.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]))
    assert load_rows(array)[0][0].reference == "A"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q"}\n')
    with pytest.raises(Exception, match="has none of the keys conversations"):
        load_rows(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "2", "--burstiness", "0.5"], "--burstiness shapes --rate's arrivals"),
        (["--rate", "1", "--burstiness", "0"], "--burstiness must be > 0"),
        (["--concurrency", "2", "--max-concurrency", "2"], "--max-concurrency caps --rate's"),
        (["--rate", "1", "--max-concurrency", "0"], "--max-concurrency must be >= 1"),
        (["--rate", "1", "--ramp-up", "-1"], "--ramp-up must be >= 0"),
        (["--rate", "1", "--input-tokens", "10", "--dataset", "x.jsonl"], "choose one"),
        (["--rate", "1", "--input-tokens", "0"], "--input-tokens must be >= 1"),
        (["--rate", "1", "--input-tokens-stddev", "3"], "--input-tokens-stddev needs --input-tokens"),
        (["--rate", "1", "--prefixes", "2"], "--prefixes needs --prefix-tokens"),
        (["--rate", "1", "--prefix-tokens", "5"], "--prefix-tokens needs --prefixes"),
        (["--rate", "1", "--max-new-tokens", "8,16", "--max-new-tokens-stddev", "2"], "not several"),
        (["--rate", "1", "--output-lengths-from-dataset", "--max-new-tokens", "8,16"], "sets the lengths"),
        (["--rate", "1", "--extra-body", "[1]"], "--extra-body: must be a JSON object"),
        (["--rate", "1", "--extra-body", "{"], "--extra-body: is not JSON"),
        (["--rate", "1", "--region", "us-east-1"], "--region is for --sagemaker-endpoint"),
        (["--rate", "1", "--sagemaker-endpoint", "e"], "give exactly one of --url and --sagemaker-endpoint"),
    ],
)
def test_bad_workload_options_are_named(tmp_path, capsys, argv, message):
    code = main(["bench", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o"), "--requests", "2", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_synthetic_prompts_need_a_tokenizer_the_server_does_not_name(tmp_path, capsys):
    with FakeLMI() as fake:
        code = main(["bench", "--url", fake.url, "--out", str(tmp_path / "o"), "--rate", "1", "--requests", "1",
                     "--input-tokens", "8"])  # fmt: skip
    assert code == 2
    assert "give --tokenizer" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_help_groups_the_options_by_what_they_shape(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    groups = ["target:", "workload:", "load:", "outputs:"]
    starts = [text.index("\n" + g) for g in groups]
    assert starts == sorted(starts)
    sections = dict(zip(groups, [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]))
    expected = {
        "target:": ["--url", "--sagemaker-endpoint", "--region", "--inference-component", "--target-variant", "--api"],
        "workload:": ["--dataset", "--input-tokens", "--prefixes", "--tokenizer", "--max-new-tokens-stddev"],
        "load:": ["--concurrency", "--rate", "--burstiness", "--max-concurrency", "--ramp-up", "--requests"],
        "outputs:": ["--stream", "--slo", "--out"],
    }
    for group, flags in expected.items():
        assert all(f"\n  {flag} " in sections[group] for flag in flags), group


def test_a_tokenizer_that_is_not_there_is_named(tmp_path, capsys):
    code = main(["bench", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "o"), "--rate", "1", "--requests",
                 "1", "--input-tokens", "8", "--tokenizer", str(tmp_path / "nowhere")])  # fmt: skip
    assert code == 2
    assert f"--tokenizer {tmp_path / 'nowhere'}: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_peer_says_what_it_needs(tmp_path, capsys, monkeypatch):
    import importlib.util

    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "serving.properties").write_text("option.pipeline=instruction\n")
    assert main(["bench", "peer", "--out", str(tmp_path / "peer"), "--model-dir", str(tmp_path / "md")]) == 2
    assert "not a model dir built with --pipeline chat" in capsys.readouterr().err
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name))
    assert main(["bench", "peer", "--out", str(tmp_path / "peer")]) == 2
    assert "pip install 'loraship[peers]'" in capsys.readouterr().err
    assert not (tmp_path / "peer").exists()
