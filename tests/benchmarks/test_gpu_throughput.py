"""CUDA generation throughput of the handler's Generator: bf16 vs bitsandbytes 8/4-bit, batch 1 vs 8,
one adapter vs a batch mixing two adapters and the base.

``make bench`` on a GPU host (skipped without CUDA). Every request generates exactly ``TOKENS``
tokens, so rounds compare; output tokens/s goes into each benchmark's ``extra_info`` and is printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraship.handler.generation import Generator, load_model
from loraship.handler.pipelines.instruction import format_prompt
from loraship.handler.properties import ServingOptions
from loraship.handler.requests import GenerationParams
from loraship.training.data import FAQ_CSV, read_qa_csv

pytestmark = pytest.mark.gpu

TOKENS = 64
PROMPTS = [format_prompt(r["instruction"]) for r in read_qa_csv(FAQ_CSV)[:8]]
PARAMS = GenerationParams(max_new_tokens=TOKENS, min_new_tokens=TOKENS)


@pytest.fixture(scope="module", params=["bf16", "bitsandbytes8", "bitsandbytes4"])
def generator(request, gpu_base):
    quantize = "" if request.param == "bf16" else request.param
    if quantize:
        pytest.importorskip("bitsandbytes")
    opts = ServingOptions.from_properties({"model_id": gpu_base, "device_id": "0", "quantize": quantize})
    model, tokenizer, device = load_model(opts)
    yield request.param, Generator(model, tokenizer, device)
    del model
    torch.cuda.empty_cache()


def _run(benchmark, gen: Generator, prompts: list[str], label: str, adapter_names=None):
    def once():
        results = gen.generate(prompts, PARAMS, adapter_names=adapter_names)
        torch.cuda.synchronize()
        return results

    results = benchmark.pedantic(once, rounds=3, warmup_rounds=1)
    assert all(r.generated_tokens == TOKENS for r in results)
    tok_s = len(prompts) * TOKENS / benchmark.stats.stats.median
    benchmark.extra_info.update({"output_tok_s": round(tok_s, 1), "batch": len(prompts)})
    print(f"\n{label}: batch {len(prompts)}, {tok_s:.0f} output tokens/s (median of 3)")


@pytest.mark.parametrize("batch", [1, 8])
def test_generate_throughput(benchmark, generator, batch):
    mode, gen = generator
    _run(benchmark, gen, PROMPTS[:batch], mode)


@pytest.fixture(scope="module")
def peft_generator(gpu_base, tmp_path_factory):
    """bf16 base with two random adapters, "a" and "b"."""
    from peft import PeftModel
    from tiny_models import save_random_adapter

    folder = tmp_path_factory.mktemp("bench-adapters")
    paths = [
        save_random_adapter(
            Path(gpu_base), folder / n, seed=i, r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        for i, n in enumerate(("a", "b"), 1)
    ]
    opts = ServingOptions.from_properties({"model_id": gpu_base, "device_id": "0"})
    model, tokenizer, device = load_model(opts)
    model = PeftModel.from_pretrained(model, str(paths[0]), adapter_name="a")
    model.load_adapter(str(paths[1]), adapter_name="b")
    return Generator(model.eval(), tokenizer, device)


@pytest.mark.parametrize("mix", ["one-adapter", "mixed"])
def test_adapter_batch_throughput(benchmark, peft_generator, mix):
    """bf16, batch 8: all rows on adapter a, or a/b/base mixed in one batch (peft's adapter_names)."""
    names = ["a"] * 8 if mix == "one-adapter" else [("a", "b", "")[i % 3] for i in range(8)]
    _run(benchmark, peft_generator, PROMPTS, f"bf16 {mix}", adapter_names=names)
