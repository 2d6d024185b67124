"""``loraship bench peer``'s GGUF files, made by llama.cpp's own converters (loraship.gguf_convert).

The converters come as users get them: the installed llama-cpp-python's sdist, fetched once with pip download
into the cache. The model is a tiny random Llama with the default model's tokenizer (the converter knows that
tokenizer's pre-tokenizer; it refuses an unknown one, such as the other tiny models' test-trained BPE).
The benchmark itself (two servers, four runs) is not run here: tests/test_bench_workload.py checks what it
refuses, and the README's figures come from real runs.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest
from servers import missing

from loraship.cli import main
from loraship.gguf_convert import (
    ConvertError,
    ConvertFailed,
    check_requirements,
    convert_adapter,
    convert_model,
    converters,
)

LAYERS, HEADS, KV_HEADS = 2, 4, 2


@pytest.fixture(scope="module")
def src() -> Path:
    """llama.cpp's converters of the installed llama-cpp-python (fails without them)."""
    if importlib.util.find_spec("llama_cpp") is None:
        missing("llama-cpp-python (pip install 'loraship[peers]')")
    try:
        check_requirements()
        return converters()
    except ConvertError as exc:
        missing(str(exc))


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny random Llama with the default model's tokenizer, a LoRA adapter on its q_proj and v_proj)."""
    import torch
    from tiny_models import save_random_adapter
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from loraship.core.models import prepare_default

    tok = AutoTokenizer.from_pretrained(prepare_default())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    base = tmp_path_factory.mktemp("smol-tiny")
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tok.save_pretrained(base)
    return base, save_random_adapter(base, tmp_path_factory.mktemp("smol-lora"), r=4, alpha=16)


@pytest.fixture(scope="module")
def converted(src, smol, tmp_path_factory) -> tuple[Path, Path]:
    """(the F32 GGUF, the LoRA GGUF), converted into a fresh cache that the module's tests share."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORASHIP_CACHE", str(tmp_path_factory.mktemp("cache")))
        base, adapter = smol
        yield convert_model(base, src, log=print), convert_adapter(adapter, base, src, log=print)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's order of a q_proj/k_proj's rows (convert_hf_to_gguf.py undoes HF's rotary permutation)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(path)
    assert {t.tensor_type for t in reader.tensors} == {GGMLQuantizationType.F32}
    return {t.name: np.asarray(t.data) for t in reader.tensors}


def test_f32_gguf_holds_the_hf_weights(converted, smol):
    from safetensors.numpy import load_file

    hf = load_file(smol[0] / "model.safetensors")
    want = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        want[f"blk.{i}.attn_q.weight"] = permute(hf[layer + "self_attn.q_proj.weight"], HEADS)
        want[f"blk.{i}.attn_k.weight"] = permute(hf[layer + "self_attn.k_proj.weight"], KV_HEADS)
        want[f"blk.{i}.attn_v.weight"] = hf[layer + "self_attn.v_proj.weight"]
        want[f"blk.{i}.attn_output.weight"] = hf[layer + "self_attn.o_proj.weight"]
        for gguf_name, hf_name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            want[f"blk.{i}.ffn_{gguf_name}.weight"] = hf[f"{layer}mlp.{hf_name}.weight"]
        want[f"blk.{i}.attn_norm.weight"] = hf[layer + "input_layernorm.weight"]
        want[f"blk.{i}.ffn_norm.weight"] = hf[layer + "post_attention_layernorm.weight"]
    got = tensors(converted[0])
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert np.array_equal(got[name], value), name


def test_lora_gguf_holds_the_adapter_and_its_alpha(converted, smol):
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    peft = load_file(smol[1] / "adapter_model.safetensors")
    want = {}
    for i in range(LAYERS):
        for proj, gguf_name in (("q_proj", "attn_q"), ("v_proj", "attn_v")):
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            b = peft[f"{key}.lora_B.weight"]
            want[f"blk.{i}.{gguf_name}.weight.lora_a"] = peft[f"{key}.lora_A.weight"]
            want[f"blk.{i}.{gguf_name}.weight.lora_b"] = permute(b, HEADS) if proj == "q_proj" else b
    got = tensors(converted[1])
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert np.array_equal(got[name], value), name
    fields = GGUFReader(converted[1]).fields
    assert fields["adapter.lora.alpha"].contents() == 16
    assert fields["adapter.type"].contents() == "lora"


def test_llama_cpp_computes_what_transformers_and_peft_do(converted, smol):
    """The same logits from llama.cpp as from transformers, without and with the adapter (peft), which moves them."""
    import torch
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = smol
    ids = AutoTokenizer.from_pretrained(base)("How do I deploy a LoRA adapter?")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        plain = model(torch.tensor([ids])).logits[0].numpy()
        tuned = PeftModel.from_pretrained(model, adapter)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(tuned - plain).max() > 0.1
    for lora, want in ((None, plain), (converted[1], tuned)):
        llm = Llama(
            str(converted[0]), n_ctx=64, n_threads=1, logits_all=True, verbose=False, lora_path=lora and str(lora)
        )
        try:
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)])
        finally:
            llm.close()
        assert np.abs(got - want).max() < 2e-3, lora


def test_conversions_are_cached_by_content(converted, src, smol, monkeypatch):
    base, adapter = smol
    monkeypatch.setenv("LORASHIP_CACHE", str(converted[0].parents[1]))
    stamps = [p.stat().st_mtime_ns for p in converted]
    assert convert_model(base, src, log=print) == converted[0]
    assert convert_adapter(adapter, base, src, log=print) == converted[1]
    assert [p.stat().st_mtime_ns for p in converted] == stamps
    assert sorted(p.name for p in converted[0].parent.iterdir()) == sorted(p.name for p in converted)


def fake_tree(folder: Path, script: str) -> Path:
    """A llama.cpp tree whose converters run ``script`` (with ``out``, the --outfile path)."""
    (folder / "gguf-py" / "gguf").mkdir(parents=True)
    body = "import sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\n" + textwrap.dedent(script)
    for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        (folder / name).write_text(body)
    (folder / "gguf-py" / "gguf" / "__init__.py").write_text("")
    return folder


def test_a_failed_conversion_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("loraship.gguf_convert.check_requirements", lambda: None)
    src = fake_tree(
        tmp_path / "llama.cpp", "open(out, 'wb').write(b'GGUF half')\nprint('out of memory'); sys.exit(3)\n"
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConvertFailed, match=r"(?s)exit 3.*out of memory"):
        convert_model(tmp_path / "model", converters(src), log=print)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_what_the_converters_need_is_named(tmp_path, monkeypatch):
    from loraship import gguf_convert

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name))
    with pytest.raises(ConvertError, match=r"missing here: sentencepiece \(pip install sentencepiece"):
        gguf_convert.check_requirements()
    with pytest.raises(ConvertError, match="not a llama.cpp source tree"):
        converters(tmp_path)


def test_bench_peer_adapter_flags(tmp_path, capsys):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    md = ["--model-dir", str(tmp_path / "md")]
    assert main(["bench", "peer", "--out", str(tmp_path / "o"), "--adapter", f"faq={adapter}", *md]) == 2
    assert "--model-dir is for a run without --adapter" in capsys.readouterr().err
    assert main(["bench", "peer", "--out", str(tmp_path / "o"), "--adapter", f"faq={tmp_path}"]) == 2
    assert "has no adapter_config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["bench", "peer", "--out", str(tmp_path / "o"), "--weights", "q8"])
    assert "invalid choice: 'q8' (choose from 'gguf', 'f32')" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_perf_decode_runs_llama_cpp_beside_the_handler(src, smol, capsys):
    """`loraship perf --decode` end to end: eager and compiled steps, the bandwidth ceiling, an adapter row and
    llama.cpp on the same weights, with every figure present (nothing asserts a speed)."""
    from loraship.perf import print_decode, run_decode

    fig = run_decode(str(smol[0]), tokens=6, prompts=2, rounds=1)
    paths = {"eager", "compiled", "compiled_aten", "adapter_row", "adapter_row_eager", "base_row_beside_adapters"}
    assert set(fig["tok_s"]) == paths | {"llama_cpp"}
    assert all(v > 0 for v in fig["tok_s"].values())
    assert fig["compiled_greedy_equals_eager"] is True and fig["adapter_compiled_greedy_equals_eager"] is True
    assert fig["read_bandwidth_gb_s"] > 0 and fig["ceiling_tok_s"] > 0
    assert fig["row_kernel"] is True and fig["row_kernel_vs_aten"] > 0  # built here, and compared with ATen
    assert set(fig["vs_llama_cpp"]) == paths
    print_decode(fig)
    out = capsys.readouterr().out
    assert "llama.cpp, F32 GGUF of the same weights" in out and "of ceiling" in out
