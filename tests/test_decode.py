"""The compiled one-row decode step (option.decode=compiled): the same tokens and log-probabilities as the
eager step, for rows that run alone, outgrow its cache, or share the batch with others for a while."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraship.handler.batching import Engine, merge
from loraship.handler.decode import pick_decode
from loraship.handler.pipelines.instruction import format_prompt
from loraship.handler.requests import GenerationParams

CACHE = 128  # the static cache's tokens (the tiny tokenizer makes ~80-token prompts)
QUESTIONS = ["What is Amazon SageMaker?", "How do I train a model?", "Which regions are supported?"]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_neox"])
def loaded(request):
    path = request.getfixturevalue(request.param)
    tok = AutoTokenizer.from_pretrained(path)
    return tok, AutoModelForCausalLM.from_pretrained(path).eval()


def engine(tok, **kw) -> Engine:
    return Engine(tok, torch.device("cpu"), {tok.eos_token_id}, **kw)


@pytest.fixture(scope="module")
def compiled(loaded):
    """An engine whose decoder has compiled (it compiles in the background; this waits for it)."""
    tok, model = loaded
    eng = engine(tok, decode="compiled", decode_tokens=CACHE)
    decoder = eng.prepare(model)
    assert decoder.ready.wait(600), f"the decode step did not compile: {decoder.error}"
    return eng


def seq(eng, tok, question: str, n: int):
    ids = tok(format_prompt(question))["input_ids"]
    return eng.new_sequence(ids, GenerationParams(max_new_tokens=n, min_new_tokens=n))


def decode(eng, model, s):
    batch = eng.prefill(model, [s])
    while batch is not None:
        batch = eng.step(model, batch)
    return s


def assert_same(got, ref):
    assert got.tokens == ref.tokens
    assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


def test_compiled_steps_give_the_eager_tokens_and_logprobs(loaded, compiled):
    tok, model = loaded
    eager = engine(tok)
    for question in QUESTIONS:
        before = compiled.decoder.steps
        got = decode(compiled, model, seq(compiled, tok, question, 20))
        assert compiled.decoder.steps - before == 19  # every step after the prefill's token
        assert_same(got, decode(eager, model, seq(eager, tok, question, 20)))


def test_a_row_that_outgrows_the_static_cache_goes_on_eagerly(loaded, compiled):
    tok, model = loaded
    question = QUESTIONS[0]
    prompt = len(tok(format_prompt(question))["input_ids"])
    n = CACHE - prompt + 10  # ten steps past the static cache
    before = compiled.decoder.steps
    got = decode(compiled, model, seq(compiled, tok, question, n))
    assert compiled.decoder.steps - before == CACHE - prompt  # up to a full cache, then eager
    eager = engine(tok)
    assert_same(got, decode(eager, model, seq(eager, tok, question, n)))


def test_a_row_leaves_the_compiled_cache_when_another_joins_and_returns_when_alone(loaded, compiled):
    """Row a decodes alone (compiled), b joins for 5 steps (eager, one batch), b ends, a goes on compiled."""
    tok, model = loaded
    a, b = seq(compiled, tok, QUESTIONS[1], 30), seq(compiled, tok, QUESTIONS[2], 6)
    batch = compiled.prefill(model, [a])
    for _ in range(8):
        batch = compiled.step(model, batch)
    assert batch.decoder is compiled.decoder  # a's cache lives in the decoder
    before = compiled.decoder.steps
    batch = merge(batch, compiled.prefill(model, [b]))
    assert batch.decoder is None and len(batch) == 2
    while len(batch) == 2:
        batch = compiled.step(model, batch)
    assert compiled.decoder.steps == before  # two rows: eager
    while batch is not None:
        batch = compiled.step(model, batch)
    assert compiled.decoder.steps - before == 30 - 1 - 8 - 5  # b's first token came from its prefill
    eager = engine(tok)
    assert_same(a, decode(eager, model, seq(eager, tok, QUESTIONS[1], 30)))
    assert_same(b, decode(eager, model, seq(eager, tok, QUESTIONS[2], 6)))


def test_peft_models_and_padded_rows_decode_eagerly(loaded, compiled):
    from peft import LoraConfig, get_peft_model

    tok, model = loaded
    eng = engine(tok, decode="compiled")
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path), LoraConfig(r=2)).eval()
    assert eng.prepare(wrapped) is None  # peft's layers are not compiled: the engine stays eager
    before = compiled.decoder.steps
    decode(compiled, wrapped, seq(compiled, tok, QUESTIONS[0], 4))
    assert compiled.decoder.steps == before  # not the model it compiled: eager


def test_auto_is_compiled_on_cpu_only():
    assert pick_decode("auto", torch.device("cpu")) == "compiled"  # this machine has a C++ compiler
    assert pick_decode("auto", torch.device("cuda", 0)) == "eager"
    assert pick_decode("auto", torch.device("cpu"), quantize="bitsandbytes8") == "eager"
    assert pick_decode("eager", torch.device("cpu")) == "eager"


def test_a_failing_compiled_step_hands_the_row_to_the_eager_path(loaded):
    """Dynamo refuses a step whose guards no longer hold (skip_guard_eval_unsafe): the row goes on eagerly,
    with the tokens it would have had, and the engine stays eager."""
    tok, model = loaded
    eng = engine(tok, decode="compiled", decode_tokens=CACHE)
    decoder = eng.prepare(model)
    assert decoder.ready.wait(600)
    s = seq(eng, tok, QUESTIONS[0], 20)
    batch = eng.prefill(model, [s])
    for _ in range(5):
        batch = eng.step(model, batch)
    assert decoder.steps == 5

    def refuse(*args):
        raise RuntimeError("Recompilation triggered with skip_guard_eval_unsafe stance")

    decoder._step = refuse
    while batch is not None:
        batch = eng.step(model, batch)
    assert decoder.steps == 6 and "Recompilation" in str(decoder.error)  # the sixth was refused
    eager = engine(tok)
    assert_same(s, decode(eager, model, seq(eager, tok, QUESTIONS[0], 20)))
