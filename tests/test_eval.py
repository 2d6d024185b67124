"""``loraship eval``: metrics, bootstrap, documents, the lm-eval tasks and model types, end to end.

The end-to-end tests use the tiny models and adapters made here: a "good" adapter trained for a
few dozen steps on deliberately favourable data (every answer is the same short sentence, so a
tiny random model can learn it and its ``### End``), and a "broken" one (random LoRA weights at
a large scale). The first must pass the default policy and the second fail it, for real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from loraship.cli import main
from loraship.evaluation.metrics import exact_match, normalize_answer, rouge_l, token_f1
from loraship.evaluation.stats import paired_bootstrap

ANSWER = "Use Amazon SageMaker."
DOCS = 12


# ---- metrics and statistics --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, ref, em, f1",
    [
        ("The Cat sat.", "cat sat", 1.0, 1.0),
        ("a cat", "the dog", 0.0, 0.0),
        ("cat sat on mat", "the cat sat", 0.0, 2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2)),
        ("", "", 1.0, 1.0),
        ("", "something", 0.0, 0.0),
    ],
)
def test_squad_style_metrics(pred, ref, em, f1):
    assert exact_match(pred, ref) == em
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_normalisation_and_rouge_l():
    assert normalize_answer("  The  A.I.,  an Answer! ") == "ai answer"
    assert rouge_l("Amazon SageMaker trains models", "Amazon SageMaker trains models") == 1.0
    assert 0 < rouge_l("SageMaker trains models quickly", "Amazon SageMaker trains models") < 1
    assert rouge_l("", "reference") == 0.0
    assert rouge_l("cats running", "cat runs") == 1.0  # stemmed, as fmeval scores it


def test_paired_bootstrap_is_seeded_and_pairs_documents():
    base = [2.9, 3.1, 2.5, 3.4, 2.8, 3.0, 2.7, 3.3]
    adapter = [b - 0.1 for b in base]  # uniformly better by 0.1, however noisy the documents
    a = paired_bootstrap(base, adapter, higher_is_better=False, iterations=2000, seed=0)
    b = paired_bootstrap(base, adapter, higher_is_better=False, iterations=2000, seed=0)
    assert a == b
    assert a["delta"] == pytest.approx(-0.1)
    assert a["ci"] == pytest.approx([-0.1, -0.1])  # pairing removes the spread between documents
    assert (a["better"], a["worse"], a["same"], a["n"]) == (8, 0, 0, 8)
    noisy = paired_bootstrap([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 1], higher_is_better=True, iterations=2000)
    assert noisy["ci"][0] < noisy["delta"] < noisy["ci"][1]
    assert noisy["ci"][0] < 0 < noisy["ci"][1]


def test_paired_bootstrap_nan_makes_everything_nan():
    out = paired_bootstrap([1.0, float("nan")], [1.0, 2.0], higher_is_better=True, iterations=200)
    assert math.isnan(out["delta"]) and all(math.isnan(x) for x in out["ci"])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0], higher_is_better=True)


# ---- documents ---------------------------------------------------------------------------------


def test_documents_from_csv_jsonl_and_split(tmp_path):
    from loraship.evaluation.score import EvalError, load_documents

    csv = tmp_path / "qa.csv"
    csv.write_text('What is it?,"A thing, really."\nWhy?,Because.\n', encoding="utf-8")
    rows, info = load_documents(data=csv)
    assert [r["instruction"] for r in rows] == ["What is it?", "Why?"] and rows[0]["response"] == "A thing, really."
    assert info["rows"] == 2 and len(info["sha256"]) == 64 and info["source"] == "data"
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"instruction": "Sum", "context": "1 and 2", "response": "3"}) + "\n")
    rows, _ = load_documents(data=jsonl)
    assert rows[0]["context"] == "1 and 2"
    run = tmp_path / "run"
    (run / "split").mkdir(parents=True)
    (run / "split" / "test.jsonl").write_text(jsonl.read_text())
    rows, info = load_documents(split_from=run)
    assert info["source"] == "split_from" and info["training_run"] == str(run.resolve())
    with pytest.raises(EvalError, match="split/test.jsonl"):
        load_documents(split_from=tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "response": ""}) + "\n")
    with pytest.raises(EvalError, match="empty"):
        load_documents(data=bad)


# ---- tasks and model types without a model ---------------------------------------------------------


def _docs_file(tmp_path, rows) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"doc_id": i, **r}) + "\n" for i, r in enumerate(rows)))
    return path


class _Chat:
    """A stand-in LM for building requests: it only has to apply the 'chat template'."""

    @staticmethod
    def apply_chat_template(history, add_generation_prompt=True):
        from loraship.evaluation.lm import LocalLM

        return LocalLM.apply_chat_template(None, history)


def test_tasks_load_offline_and_template_comes_from_the_handler(tmp_path):
    from lm_eval.tasks import TaskManager

    from loraship.evaluation.score import GENERATION, REFERENCE_LOSS, TASKS_DIR
    from loraship.handler.pipelines.instruction import format_prompt, format_response

    docs = _docs_file(
        tmp_path,
        [
            {"instruction": "What is SageMaker?", "context": "", "response": "A service."},
            {"instruction": "Sum them", "context": "1 and 2", "response": "3"},
        ],
    )
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"docs": str(docs)})
    tasks = tm.load([GENERATION, REFERENCE_LOSS])["tasks"]
    gen, ref = tasks[GENERATION], tasks[REFERENCE_LOSS]
    for task in (gen, ref):
        task.set_config(key="num_fewshot", value=0)
        task.build_all_requests(apply_chat_template=True, chat_template=_Chat.apply_chat_template, tokenizer_name="t")
    assert [i.args[0] for i in gen.instances] == [
        format_prompt("What is SageMaker?"),
        format_prompt("Sum them", "1 and 2"),
    ]
    assert gen.instances[0].args[1]["until"] == []  # the pipeline's own stop markers apply
    assert ref.instances[1].args == (format_prompt("Sum them", "1 and 2"), format_response("3"))
    assert gen.higher_is_better() == {"rougeL": True, "token_f1": True, "exact_match": True, "end_marker_rate": True}
    assert ref.higher_is_better() == {"reference_loss": False}


def test_generation_metrics_use_finish_reason_and_reference_loss_is_per_token():
    import sys

    from loraship.evaluation.lm import Completion, LogLikelihood
    from loraship.evaluation.score import TASKS_DIR

    sys.path.insert(0, str(TASKS_DIR))
    try:
        import utils
    finally:
        sys.path.remove(str(TASKS_DIR))
    doc = {"response": "Amazon SageMaker trains models."}
    ended = utils.process_generation(doc, [Completion("Amazon SageMaker trains models.", "stop", 6)])
    assert ended == {"rougeL": 1.0, "token_f1": 1.0, "exact_match": 1.0, "end_marker_rate": 1.0}
    assert utils.process_generation(doc, [Completion("x", "length", 6)])["end_marker_rate"] == 0.0
    assert utils.process_generation(doc, [Completion("x", "eos", 1)])["end_marker_rate"] == 1.0
    assert math.isnan(utils.process_generation(doc, ["plain str"])["end_marker_rate"])
    assert utils.process_reference_loss(doc, [LogLikelihood(-12.0, False, 4)]) == {"reference_loss": 3.0}
    assert LogLikelihood(-12.0, True, 4) == (-12.0, True)  # still lm-eval's pair


def test_model_types_are_in_lm_evals_registry():
    from lm_eval.api.registry import get_model

    from loraship.evaluation.lm import EndpointLM, LocalLM

    assert get_model("loraship") is LocalLM and get_model("loraship-endpoint") is EndpointLM


def test_endpoint_model_sends_the_raw_instruction():
    from loraship.evaluation.lm import EndpointLM, EvalError

    lm = EndpointLM("http://127.0.0.1:9/", adapter="faqs")
    assert lm.url == "http://127.0.0.1:9/invocations"
    assert lm.apply_chat_template([{"role": "user", "content": "What is SageMaker?"}]) == "What is SageMaker?"
    with pytest.raises(EvalError, match="context"):
        lm.apply_chat_template([{"role": "system", "content": "ctx"}, {"role": "user", "content": "q"}])
    assert lm.body("q", {"until": [], "max_gen_toks": 16, "do_sample": False}) == {
        "inputs": "q",
        "parameters": {"max_new_tokens": 16, "details": True},
        "adapters": "faqs",
    }
    assert lm.loglikelihood([]) == []  # scored from the server's prompt log-probabilities (tested with a server)
    with pytest.raises(NotImplementedError):
        lm.loglikelihood_rolling([])
    with pytest.raises(EvalError, match="cannot reach"):
        lm.post({"inputs": "q"})


# ---- adapters made here --------------------------------------------------------------------------


def favourable_docs() -> list[dict]:
    """Short FAQ questions that all get the same short answer: learnable by a tiny random model."""
    from loraship.training.data import FAQ_CSV, read_qa_csv

    rows = [r for r in read_qa_csv(FAQ_CSV) if len(r["instruction"]) < 60][:DOCS]
    return [{"instruction": r["instruction"], "context": "", "response": ANSWER, "row": r["row"]} for r in rows]


def train_tiny_adapter(base: Path, rows: list[dict], out: Path, steps: int = 60) -> Path:
    """A LoRA adapter trained the recipe's way (training.data's examples: labels on the answer,
    ### End and EOS), written like a `loraship train` output: adapter, split/, manifest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.training.data import collate, encode_example

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "embed_out"],
        ),
    )
    batch = collate([encode_example(tok, r) for r in rows[:6]], tok.eos_token_id)  # the answer is constant
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    (out / "split").mkdir()
    for name in ("train", "test"):
        (out / "split" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "training_manifest.json").write_text(json.dumps({"base_model": {"spec": str(base), "path": str(base)}}))
    return out


def broken_adapter(base: Path, out: Path) -> Path:
    """Random LoRA weights at a large scale (alpha / r = 256): what a corrupted adapter looks like."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=1024, target_modules=["query_key_value"], init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def good_run(tiny_neox, tmp_path_factory) -> Path:
    return train_tiny_adapter(tiny_neox, favourable_docs(), tmp_path_factory.mktemp("good") / "run")


@pytest.fixture(scope="module")
def broken(tiny_neox, tmp_path_factory) -> Path:
    return broken_adapter(tiny_neox, tmp_path_factory.mktemp("broken") / "adapter")


def _eval_args(out, *extra):
    return ["eval", "--out", str(out), "--max-new-tokens", "24", "--bootstrap", "2000", *extra]


# ---- end to end ------------------------------------------------------------------------------------


def test_trained_adapter_passes_the_default_gate(good_run, tmp_path):
    assert main(_eval_args(tmp_path / "eval", "--split-from", str(good_run))) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    name = good_run.name
    assert result["variants"] == ["__base__", name]
    assert result["data"]["source"] == "split_from" and result["data"]["rows"] == DOCS
    assert result["model"]["path"] == str(
        Path(json.loads((good_run / "training_manifest.json").read_text())["base_model"]["path"]).resolve()
    )
    from loraship.core.hashing import adapter_sha256

    assert result["adapters"][name]["sha256"] == adapter_sha256(good_run)
    loss = result["metrics"]["reference_loss"]
    assert loss["n"] == DOCS and loss["higher_is_better"] is False
    assert loss["adapters"][name]["delta"] < 0 and loss["adapters"][name]["ci"][1] < 0
    assert result["metrics"]["end_marker_rate"]["adapters"][name]["value"] >= 0.5
    assert result["metrics"]["rougeL"]["adapters"][name]["delta"] > 0
    for files in result["samples"].values():
        assert set(files) == {"__base__", name}
        lines = (tmp_path / "eval" / files[name]).read_text().splitlines()
        assert len(lines) == DOCS
    sample = json.loads(
        (tmp_path / "eval" / result["samples"]["loraship_generation"][name]).read_text().splitlines()[0]
    )
    assert sample["finish_reason"] in ("stop", "eos", "length") and "response" in sample

    code = main(["gate", "--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(tmp_path / "gate")])
    gate = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert code == 0, [c for c in gate["checks"] if c["status"] == "fail"]
    assert gate["verdict"] == "pass" and gate["adapters"][name]["verdict"] == "pass"
    assert (tmp_path / "gate" / "junit.xml").is_file() and (tmp_path / "gate" / "gate.md").is_file()


def test_broken_adapter_fails_the_default_gate(tiny_neox, broken, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r) + "\n" for r in favourable_docs()))
    assert (
        main(
            _eval_args(
                tmp_path / "eval", "--model", str(tiny_neox), "--data", str(docs), "--adapter", f"broken={broken}"
            )
        )
        == 0
    )
    assert main(["gate", "--eval", str(tmp_path / "eval" / "eval.json"), "--out", str(tmp_path / "gate")]) == 1
    gate = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert gate["verdict"] == "fail" and gate["adapters"]["broken"]["verdict"] == "fail"
    failed = {(c["metric"], c["check"]) for c in gate["checks"] if c["status"] == "fail"}
    assert {("reference_loss", "min_gain"), ("reference_loss", "significant"), ("end_marker_rate", "floor")} <= failed
    assert "Worst regressed samples" in (tmp_path / "gate" / "gate.md").read_text()


def test_eval_refuses_bad_input(tiny_neox, good_run, tmp_path, capsys):
    assert (
        main(
            _eval_args(
                tmp_path / "a",
                "--data",
                str(tmp_path / "missing.jsonl"),
                "--adapter",
                f"x={good_run}",
                "--model",
                str(tiny_neox),
            )
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(_eval_args(tmp_path / "b", "--data", str(tmp_path / "missing.jsonl"), "--adapter", f"x={tmp_path}")) == 2
    )
    assert "adapter_config.json" in capsys.readouterr().err


# ---- in process against the served handler -----------------------------------------------------------


@pytest.fixture(scope="module", params=["host", "djl"])
def served(request, tiny_neox, good_run, tmp_path_factory):
    """The tiny model and the trained adapter (as "faqs") behind each server (real DJL Serving and the host),
    one request at a time."""
    from servers import start_server

    from loraship.build import build_model_dir

    model_dir = build_model_dir(
        str(tiny_neox), tmp_path_factory.mktemp("md") / "tiny", {"faqs": good_run}, max_new_tokens=64
    )
    srv = start_server(model_dir, tmp_path_factory, kind=request.param)
    yield srv
    srv.stop()


@pytest.mark.server
def test_endpoint_scores_equal_in_process_scores(served, tiny_neox, good_run, tmp_path):
    """Greedy answers through HTTP are the in-process answers, so what is gated is what is served."""
    docs = tmp_path / "docs.jsonl"
    rows = favourable_docs()
    rows[1]["response"] = "A different answer, so that the metrics are not all 1."
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--data", str(docs), "--adapter", f"faqs={good_run}", "--limit", "8"]
    assert main(_eval_args(tmp_path / "local", "--model", str(tiny_neox), *common)) == 0
    assert main(_eval_args(tmp_path / "http", "--endpoint", served.url, *common)) == 0
    local = json.loads((tmp_path / "local" / "eval.json").read_text())
    http = json.loads((tmp_path / "http" / "eval.json").read_text())
    assert http["mode"] == "endpoint" and set(http["metrics"]) == set(local["metrics"]) == {
        "rougeL",
        "token_f1",
        "exact_match",
        "end_marker_rate",
        "reference_loss",
    }
    for variant in ("__base__", "faqs"):
        ours = [
            json.loads(x)
            for x in (tmp_path / "local" / local["samples"]["loraship_generation"][variant]).read_text().splitlines()
        ]
        theirs = [
            json.loads(x)
            for x in (tmp_path / "http" / http["samples"]["loraship_generation"][variant]).read_text().splitlines()
        ]
        assert [(s["response"], s["finish_reason"]) for s in ours] == [
            (s["response"], s["finish_reason"]) for s in theirs
        ]
    for metric, entry in http["metrics"].items():
        if metric == "reference_loss":  # the server's log-probabilities: equal within 1e-3 nats per token
            assert entry["base"] == pytest.approx(local["metrics"][metric]["base"], abs=1e-3)
            got, want = entry["adapters"]["faqs"], local["metrics"][metric]["adapters"]["faqs"]
            assert got["value"] == pytest.approx(want["value"], abs=1e-3)
            assert got["delta"] == pytest.approx(want["delta"], abs=1e-3)
            continue
        assert entry["base"] == local["metrics"][metric]["base"]
        assert entry["adapters"]["faqs"] == local["metrics"][metric]["adapters"]["faqs"]
    assert local["metrics"]["end_marker_rate"]["adapters"]["faqs"]["value"] > 0.5  # the comparison means something
    assert http["adapters"]["faqs"]["sha256"] == local["adapters"]["faqs"]["sha256"]
