"""The compiled one-row decode step (option.decode=compiled): the same tokens and log-probabilities as the
eager step, for rows that run alone, outgrow its cache, or share the batch with others for a while."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraship.handler import row_kernel
from loraship.handler.batching import Engine, merge
from loraship.handler.decode import WINDOW, RowLinear, pick_decode
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


def test_the_step_runs_on_the_row_kernel_and_attends_over_the_row_s_window(loaded, compiled):
    """The twin's linear layers are the row kernel's and its attention reads the row's tokens only: a row's
    steps at every length run one graph (a recompile would be refused, and the row would go eager)."""
    tok, model = loaded
    twin = compiled.decoder.twin
    assert twin.config._attn_implementation == WINDOW
    assert {type(m) for m in twin.modules() if isinstance(m, torch.nn.Linear)} == {RowLinear}
    before = compiled.decoder.steps
    n = CACHE - len(tok(format_prompt(QUESTIONS[2]))["input_ids"])  # to the end of the cache
    decode(compiled, model, seq(compiled, tok, QUESTIONS[2], n))
    assert compiled.decoder.error is None and compiled.decoder.steps - before == n - 1


def test_without_the_row_kernel_the_step_keeps_aten_s_product(loaded, monkeypatch):
    tok, model = loaded
    monkeypatch.setattr(row_kernel, "load", lambda: False)
    eng = engine(tok, decode="compiled", decode_tokens=CACHE)
    decoder = eng.prepare(model, background=False)
    assert decoder.ready.is_set(), decoder.error
    assert not any(isinstance(m, RowLinear) for m in decoder.twin.modules())
    got = decode(eng, model, seq(eng, tok, QUESTIONS[0], 12))
    assert decoder.steps == 11
    eager = engine(tok)
    assert_same(got, decode(eager, model, seq(eager, tok, QUESTIONS[0], 12)))


def test_a_sliding_window_model_decodes_eagerly(tmp_path):
    """A sliding-window layer's cache keeps its last tokens only, which the compiled step cannot read: eager."""
    from tiny_models import save_tiny_model

    path = save_tiny_model(tmp_path / "mistral", "mistral")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    eng = engine(tok, decode="compiled", decode_tokens=CACHE)
    assert eng.prepare(model, background=False) is None and eng.decode == "eager"
    eager = engine(tok)
    assert_same(
        decode(eng, model, seq(eng, tok, QUESTIONS[0], 8)), decode(eager, model, seq(eager, tok, QUESTIONS[0], 8))
    )


def test_another_model_decodes_eagerly(loaded, compiled):
    tok, model = loaded
    other = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    before = compiled.decoder.steps
    decode(compiled, other, seq(compiled, tok, QUESTIONS[0], 4))
    assert compiled.decoder.steps == before  # not the model it compiled: eager


RANK = 8  # the adapter slot's rank in these tests


def lora(model, rank: int, seed: int, targets=None):
    from peft import LoraConfig

    targets = targets or (
        ["query_key_value", "dense_4h_to_h"]
        if model.config.model_type == "gpt_neox"
        else ["q_proj", "v_proj", "down_proj"]
    )
    torch.manual_seed(seed)
    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)


@pytest.fixture(scope="module")
def adapters(loaded):
    """A fresh copy of the model, wrapped by peft with adapters that fit the slot and some that do not;
    an engine whose decoder has compiled both steps; and an eager engine."""
    from peft import get_peft_model

    tok, model = loaded
    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    wrapped = get_peft_model(base, lora(base, RANK, 1), adapter_name="one").eval()
    wrapped.add_adapter("two", lora(base, 4, 2))
    wrapped.add_adapter("too_big", lora(base, 2 * RANK, 3))
    head = [n for n, m in base.named_modules() if m is base.get_output_embeddings()]
    wrapped.add_adapter("on_the_head", lora(base, 4, 4, targets=head))
    eng = engine(tok, decode="compiled", decode_tokens=CACHE, lora_rank=RANK)
    decoder = eng.prepare(wrapped, background=False)
    assert decoder.lora_ready.is_set(), f"the adapter step did not compile: {decoder.error}"
    return tok, wrapped, eng, engine(tok)


def decode_on(eng, model, tok, question: str, adapter: str, n: int = 16):
    ids = tok(format_prompt(question))["input_ids"]
    return decode(eng, model, eng.new_sequence(ids, GenerationParams(max_new_tokens=n, min_new_tokens=n), adapter))


@pytest.mark.parametrize("adapter", ["one", "two", ""])
def test_rows_on_an_adapter_or_the_base_take_the_compiled_step_with_peft_s_results(adapters, adapter):
    """Each row alone, on an adapter (its weights copied into the slots) or on the base beside loaded
    adapters, decodes compiled and gets what peft's eager step gives it."""
    tok, wrapped, eng, eager = adapters
    for question in QUESTIONS[:2]:
        before = eng.decoder.steps
        got = decode_on(eng, wrapped, tok, question, adapter)
        assert eng.decoder.steps - before == 15
        assert_same(got, decode_on(eager, wrapped, tok, question, adapter))


def test_switching_adapters_between_rows_leaves_nothing_behind(adapters):
    tok, wrapped, eng, eager = adapters
    order = ["one", "two", "", "one", ""]
    got = [decode_on(eng, wrapped, tok, QUESTIONS[2], name) for name in order]
    want = {name: decode_on(eager, wrapped, tok, QUESTIONS[2], name) for name in set(order)}
    for name, g in zip(order, got):
        assert_same(g, want[name])
    assert got[0].tokens != got[1].tokens  # the adapters do change the output (random LoRA weights)


@pytest.mark.parametrize("adapter", ["too_big", "on_the_head"])
def test_adapters_that_do_not_fit_the_slot_decode_eagerly(adapters, adapter):
    tok, wrapped, eng, eager = adapters
    before = eng.decoder.steps
    got = decode_on(eng, wrapped, tok, QUESTIONS[0], adapter)
    assert eng.decoder.steps == before
    assert_same(got, decode_on(eager, wrapped, tok, QUESTIONS[0], adapter))


def test_only_the_named_modules_get_a_slot_and_other_adapters_decode_eagerly(loaded):
    """option.lora_target_modules: slots on those modules only; an adapter on others decodes eagerly."""
    from peft import get_peft_model

    tok, model = loaded
    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    slot = "query_key_value" if base.config.model_type == "gpt_neox" else "q_proj"
    wrapped = get_peft_model(base, lora(base, 4, 1, targets=[slot]), adapter_name="inside").eval()
    wrapped.add_adapter("outside", lora(base, 4, 2))  # the default targets: more modules than the slot's
    eng = engine(tok, decode="compiled", decode_tokens=CACHE, lora_rank=RANK, lora_targets=(slot,))
    decoder = eng.prepare(wrapped, background=False)
    assert decoder.lora_ready.is_set()
    assert decoder._slots and all(name.endswith("." + slot) for name in decoder._slots)
    eager = engine(tok)
    for name, compiled_steps in (("inside", 15), ("outside", 0)):
        before = decoder.steps
        got = decode_on(eng, wrapped, tok, QUESTIONS[0], name)
        assert decoder.steps - before == compiled_steps
        assert_same(got, decode_on(eager, wrapped, tok, QUESTIONS[0], name))


def test_a_model_the_twin_cannot_be_built_from_decodes_eagerly(loaded):
    """peft's trained copy of a whole module (modules_to_save) renames the base's weights: no twin, no
    compiled step, and the rows decode eagerly with their results."""
    from peft import get_peft_model

    tok, model = loaded
    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    head = next(n for n, m in base.named_modules() if m is base.get_output_embeddings())
    cfg = lora(base, 4, 5)
    cfg.modules_to_save = [head]
    wrapped = get_peft_model(base, cfg, adapter_name="saved").eval()
    eng = engine(tok, decode="compiled", decode_tokens=CACHE, lora_rank=RANK)
    assert eng.prepare(wrapped, background=False) is None and eng.decode == "eager"
    eager = engine(tok)
    for name in ("saved", ""):
        assert_same(
            decode_on(eng, wrapped, tok, QUESTIONS[0], name), decode_on(eager, wrapped, tok, QUESTIONS[0], name)
        )


def test_grown_embeddings_end_the_compiled_step(loaded):
    """An adapter with added tokens replaces the embeddings the twin shares: every row then decodes eagerly."""
    tok, model = loaded
    base = AutoModelForCausalLM.from_pretrained(model.name_or_path).eval()
    eng = engine(tok, decode="compiled", decode_tokens=CACHE)
    decoder = eng.prepare(base, background=False)
    assert decoder.serves(base)
    base.resize_token_embeddings(base.config.vocab_size + 8)
    assert not decoder.serves(base)
    before = decoder.steps
    decode(eng, base, seq(eng, tok, QUESTIONS[0], 4))
    assert decoder.steps == before


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
