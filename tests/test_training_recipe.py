"""The recipe end to end on the tiny test models: outputs, special tokens, refusals, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraship.training.config import DEFAULT_CONFIG, load_config
from loraship.training.data import collate, encode_rows
from loraship.training.outputs import MANIFEST, TrainingError, load_checkpoint, prepare_output
from loraship.training.recipe import CompletionLoss, run_cli, train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.max_steps=4", "train.batch_size=4", "train.grad_accum=2", "data.max_length=512", "optim.lr=0.02"]


def tiny_config(model: Path, *extra: str):
    return load_config(DEFAULT_CONFIG, [f"model.path={model}", *FAST, *extra])


@pytest.fixture(scope="module")
def tiny_llama_tied(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with input and output embeddings tied, as SmolLM2's are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    untied = AutoModelForCausalLM.from_pretrained(tiny_llama)
    config = untied.config
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config)
    model.model.load_state_dict(untied.model.state_dict())
    folder = tmp_path_factory.mktemp("tiny-llama-tied")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    return folder


def held_out_loss(model, tokenizer, out: Path) -> float:
    """Teacher-forced loss per response token on split/test.jsonl, as evaluation computes it."""
    rows = [json.loads(line) for line in (out / "split" / "test.jsonl").read_text().splitlines()]
    examples, _ = encode_rows(tokenizer, rows)
    loss_fn = CompletionLoss(model).eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            loss_sum, n = loss_fn(**collate(examples[i : i + 4], tokenizer.eos_token_id))
            total, count = total + float(loss_sum), count + int(n)
    return total / count


@pytest.mark.parametrize("base", ["tiny_neox", "tiny_llama"])
def test_completion_loss_equals_the_full_logits_loss(base, request):
    """Projecting only the labelled positions changes memory, not the loss or its gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.training.data import FAQ_CSV, read_qa_csv

    model_dir = request.getfixturevalue(base)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = collate(encode_rows(tokenizer, read_qa_csv(FAQ_CSV)[:4])[0], tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, init_lora_weights=False, lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    loss_sum, n = CompletionLoss(model)(**batch)
    (loss_sum / n).backward()
    ours = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    reference = model(**batch).loss  # transformers' own shifted, ignore-index mean over all logits
    reference.backward()
    assert float((loss_sum / n).detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for k, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[k], p.grad, rtol=1e-4, atol=1e-7)


def test_gradient_checkpointing_trains_the_same_weights(tiny_llama, tmp_path):
    args = ["train.max_steps=2", "lora.dropout=0.0"]
    train(tiny_config(tiny_llama, *args, "model.gradient_checkpointing=true"), tmp_path / "gc")
    train(tiny_config(tiny_llama, *args), tmp_path / "plain")
    a = load_file(tmp_path / "gc" / "adapter_model.safetensors")
    b = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_second_run_in_one_process_may_change_precision(tiny_llama, tmp_path):
    """accelerate keeps per-process state; a later train() asking for another precision still runs."""
    train(tiny_config(tiny_llama, "train.max_steps=1"), tmp_path / "fp32")
    manifest = train(tiny_config(tiny_llama, "train.max_steps=1", "model.precision=bf16-mixed"), tmp_path / "bf16")
    assert manifest["run"]["steps"] == 1 and manifest["config"]["model"]["precision"] == "bf16-mixed"


def test_tiny_run_writes_a_servable_adapter_and_its_record(tiny_neox, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.handler.adapters import validate_adapter_dir

    out = tmp_path / "run"
    manifest = train(tiny_config(tiny_neox, "train.eval_every=2"), out)
    assert validate_adapter_dir(str(out))["target_modules"] == ["query_key_value"]
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "loss_curve.png",
        "metrics.jsonl",
        "training_config.yaml",
        "split/train.jsonl",
        "split/test.jsonl",
        MANIFEST,
    ):
        assert (out / name).is_file(), name
    assert not (out / "tokenizer.json").exists()  # the tokenizer did not change
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["run"]["steps"] == 4 and manifest["seed"] == 0
    assert manifest["data"]["test_rows"] == 14 and manifest["data"]["train_rows"] == 140
    assert len((out / "split" / "test.jsonl").read_text().splitlines()) == 14
    assert len(manifest["base_model"]["sha256"]) == 64 and len(manifest["data"]["sha256"]) == 64
    assert {"torch", "transformers", "peft", "accelerate"} <= set(manifest["versions"])
    results = manifest["results"]
    assert results["train_tokens_per_s"] > 0 and results["peak_rss_mb"] > 0
    assert [m["step"] for m in manifest_metrics(out) if "eval_loss" in m] == [0, 2, 4]
    # The adapter alone reproduces the run's final held-out loss.
    tokenizer = AutoTokenizer.from_pretrained(tiny_neox)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_neox), out)
    assert held_out_loss(model, tokenizer, out) == pytest.approx(results["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("base", ["tiny_neox", "tiny_llama_tied"])
def test_special_tokens_round_trip(base, request, tmp_path):
    """Markers as special tokens: the adapter folder carries the tokenizer and the resized
    embeddings, and reloads onto a freshly resized base with the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.handler.pipelines.instruction import END_KEY, INSTRUCTION_KEY, RESPONSE_KEY

    model_dir = request.getfixturevalue(base)
    out = tmp_path / "run"
    manifest = train(tiny_config(model_dir, "template.special_tokens=true"), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base_len = len(AutoTokenizer.from_pretrained(model_dir))
    assert len(tokenizer) == base_len + 3 and manifest["adapter"]["tokenizer_saved"]
    ids = tokenizer(f"{INSTRUCTION_KEY}\nHi\n\n{RESPONSE_KEY}\nHello\n\n{END_KEY}", return_tensors="pt")["input_ids"]
    assert {base_len, base_len + 1, base_len + 2} <= set(ids[0].tolist())

    def reload(seed: int):
        torch.manual_seed(seed)  # resizing draws the new rows at random: the adapter must override them
        lm = AutoModelForCausalLM.from_pretrained(model_dir)
        lm.resize_token_embeddings(len(tokenizer))
        return PeftModel.from_pretrained(lm, out).eval()

    first, second = reload(1), reload(2)
    with torch.no_grad():
        torch.testing.assert_close(first(input_ids=ids).logits, second(input_ids=ids).logits)
    assert held_out_loss(first, tokenizer, out) == pytest.approx(manifest["results"]["eval_loss"], rel=1e-5)


def test_output_dir_refusals(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="holds no loraship training run"):
        prepare_output(tmp_path / "other", resume=False, overwrite=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        prepare_output(tmp_path / "empty", resume=True, overwrite=False)
    done = tmp_path / "done"
    done.mkdir()
    (done / "training_config.yaml").write_text("{}")
    with pytest.raises(TrainingError, match="unfinished run; pass --resume"):
        prepare_output(done, resume=False, overwrite=False)
    (done / MANIFEST).write_text("{}")
    for resume in (False, True):
        with pytest.raises(TrainingError, match="finished adapter .* pass --overwrite"):
            prepare_output(done, resume=resume, overwrite=False)
    assert prepare_output(done, resume=False, overwrite=True) is None and not done.exists()


def test_quantized_loading_on_cpu_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for mode in ("8bit", "4bit"):
        with pytest.raises(TrainingError, match=f"model.quantize={mode} .* needs a CUDA GPU"):
            train(load_config(DEFAULT_CONFIG, [f"model.quantize={mode}"]), tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_cli_reports_config_problems(tmp_path, capsys):
    from loraship.cli import main

    assert main(["train", "--output", str(tmp_path / "x"), "--set", "lora.r=0", "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "loraship train: error:" in err and "2 problem(s)" in err
    assert "lora.r: must be >= 1" in err and "train.nope: unknown key" in err


def test_resume_after_sigkill_reaches_the_same_step_and_weights(tiny_llama, tmp_path):
    """A run killed with SIGKILL after its first checkpoint, resumed, ends where an uninterrupted
    run ends: same step count, same adapter weights (so the same data order, RNG and optimizer)."""
    steps = 40
    args = [
        f"model.path={tiny_llama}",
        f"train.max_steps={steps}",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.checkpoint_every=1",
        "train.eval_every=0",
        "data.max_length=512",
        "optim.lr=0.02",
    ]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "loraship.cli", "train", "--output", str(out)]
    for a in args:
        command += ["--set", a]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-000001").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    assert not (out / MANIFEST).exists() and not (out / "adapter_model.safetensors").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-[0-9]*") if p.is_dir())
    assert 1 <= killed_at < steps
    load_checkpoint(out / f"checkpoint-{killed_at:06d}")  # whole, not torn

    assert run_cli(None, str(out), args) == 2  # no --resume: refused
    with pytest.raises(TrainingError, match=r"changed: optim.lr \(0.02 -> 0.03\)"):
        train(load_config(DEFAULT_CONFIG, args + ["optim.lr=0.03"]), out, resume=True)

    resumed = subprocess.run(command + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["run"]["steps"] == steps and manifest["run"]["resumed_from_step"] >= killed_at
    assert [m["step"] for m in manifest_metrics(out) if "train_loss" in m] == list(range(1, steps + 1))

    straight = train(load_config(DEFAULT_CONFIG, args + ["train.checkpoint_every=0"]), tmp_path / "straight")
    assert straight["run"]["steps"] == steps
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert manifest["results"]["eval_loss"] == pytest.approx(straight["results"]["eval_loss"], rel=1e-5)


def manifest_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_accelerate_launch_two_processes_matches_one(tiny_llama, tmp_path):
    """`accelerate launch` runs the unchanged command data-parallel (gloo on CPU here, NCCL on GPUs):
    2 processes x batch 2 take the same steps as 1 process x batch 4."""
    import socket

    args = [
        f"model.path={tiny_llama}",
        "train.max_steps=4",
        "train.grad_accum=1",
        "train.eval_every=0",
        "data.max_length=512",
        "optim.lr=0.5",
        "optim.name=sgd",
        "lora.dropout=0.0",
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "loraship.cli",
        "train",
        "--output",
        str(tmp_path / "ddp"),
    ]
    for a in args + ["train.batch_size=2"]:
        command += ["--set", a]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / MANIFEST).read_text())
    assert ddp["run"]["processes"] == 2 and ddp["run"]["steps"] == 4

    single = train(load_config(DEFAULT_CONFIG, args + ["train.batch_size=4"]), tmp_path / "single")
    assert ddp["results"]["train_tokens"] == single["results"]["train_tokens"]
    a = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    b = load_file(tmp_path / "single" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert ddp["results"]["eval_loss"] == pytest.approx(single["results"]["eval_loss"], rel=1e-5)
