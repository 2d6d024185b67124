"""The CUDA-only paths: bf16 by default, bitsandbytes 8/4-bit serving (with adapters, mixed
batches) and k-bit / mixed-precision training whose adapters the handler then serves.

Marked ``gpu``: skipped where torch sees no CUDA device (CI). The base model is ``gpu_base``
(conftest): the embedded default, or ``$LORASHIP_GPU_MODEL``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import batch_input, init_input, read_output, request_input

pytestmark = pytest.mark.gpu

QUESTION = "What is Amazon SageMaker?"
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def model_dir(gpu_base, tmp_path_factory) -> Path:
    """A model dir holding two random adapters for the GPU base (adapters must live under it)."""
    from tiny_models import save_random_adapter

    folder = tmp_path_factory.mktemp("gpu-model-dir")
    for seed, name in ((1, "one"), (2, "two")):
        save_random_adapter(
            Path(gpu_base), folder / "adapters" / name, seed=seed, r=8, alpha=16, target_modules=LLAMA_TARGETS
        )
    return folder


def _service(gpu_base, model_dir, **props):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    init = {"model_id": gpu_base, "model_dir": str(model_dir), "device_id": "0", "max_new_tokens": "64", **props}
    assert svc.handle(init_input(init)) is None
    return svc


def _ask(svc, adapter: str, question: str = QUESTION, tokens: int = 16):
    return request_input(
        {"inputs": question, "adapters": adapter, "parameters": {"max_new_tokens": tokens, "details": True}}
    )


def _bnb_linear_types(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")}


def test_auto_dtype_is_bf16_on_cuda(gpu_base, model_dir):
    svc = _service(gpu_base, model_dir)
    model = svc.adapters.model
    assert svc.generator.device.type == "cuda"
    assert next(model.parameters()).device.type == "cuda"
    assert model.dtype == torch.bfloat16
    code, body = read_output(svc.handle(_ask(svc, "")))
    assert code == 200 and body["details"]["generated_tokens"] > 0


@pytest.mark.parametrize("quantize, layer", [("bitsandbytes8", "Linear8bitLt"), ("bitsandbytes4", "Linear4bit")])
def test_quantized_serving_with_mixed_adapter_batch(gpu_base, model_dir, quantize, layer):
    pytest.importorskip("bitsandbytes")
    svc = _service(gpu_base, model_dir, quantize=quantize, adapter_checkpoint="adapters/one", adapter_name="one")
    svc.register("two", str(model_dir / "adapters" / "two"))
    assert layer in _bnb_linear_types(svc.adapters.model)
    # 8/4-bit weights take less memory than the bf16 model would (Params4bit packs two per byte).
    params = svc.adapters.model.parameters()
    n_params = sum(getattr(getattr(p, "quant_state", None), "shape", p.shape).numel() for p in params)
    footprint = svc.adapters.model.get_memory_footprint()
    assert footprint < 0.8 * 2 * n_params, (footprint, n_params)

    singles = {name: read_output(svc.handle(_ask(svc, name))) for name in ("", "one", "two")}
    assert all(code == 200 for code, _ in singles.values()), singles
    texts = {name: body["generated_text"] for name, (_, body) in singles.items()}
    assert len(set(texts.values())) == 3, f"adapters did not change the answer under {quantize}: {texts}"

    # One batch mixing base, both adapters and a bad request: peft's adapter_names on bnb layers.
    batch = [_ask(svc, "two"), _ask(svc, ""), request_input(b"{broken"), _ask(svc, "one")]
    bodies = read_output(svc.handle(batch_input(batch)), 4)
    assert bodies[2]["code"] == 400
    assert {b["details"]["adapter"] for i, b in enumerate(bodies) if i != 2} == {"two", "__base__", "one"}
    assert all(b["details"]["batch_size"] == 4 for i, b in enumerate(bodies) if i != 2)
    rows = [bodies[i]["generated_text"] for i in (0, 1, 3)]
    assert len(set(rows)) == 3, rows

    # Each row of a mixed batch is computed with its own adapter: the last-position logits of one
    # forward over [two, base, one] match three separate forwards, far closer than adapters differ.
    from loraship.handler.pipelines.instruction import format_prompt

    model, tok = svc.adapters.model, svc.generator.tokenizer
    enc = tok([format_prompt(QUESTION)] * 3, return_tensors="pt").to(svc.generator.device)
    names = ["two", "__base__", "one"]
    with torch.no_grad():
        mixed = model(**enc, adapter_names=names).logits[:, -1].float()
        alone = torch.cat(
            [
                model(**{k: v[i : i + 1] for k, v in enc.items()}, adapter_names=[n]).logits[:, -1]
                for i, n in enumerate(names)
            ]
        ).float()
    err = (mixed - alone).abs().max().item()
    gap = min((alone[i] - alone[j]).abs().max().item() for i, j in ((0, 1), (1, 2), (0, 2)))
    assert err < 0.1 * gap, f"mixed-batch logits off by {err}, adapters differ by {gap} ({quantize})"


def _train(gpu_base, out: Path, *overrides: str) -> dict:
    from loraship.training.config import DEFAULT_CONFIG, load_config
    from loraship.training.recipe import train

    cfg = load_config(
        DEFAULT_CONFIG,
        [
            f"model.path={gpu_base}",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.grad_accum=2",
            "train.eval_every=3",
            "train.checkpoint_every=3",
            "optim.lr=0.001",
            *overrides,
        ],
    )
    return train(cfg, out)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.precision=bf16-mixed",),
        ("model.precision=fp16-mixed",),
        ("model.quantize=8bit", "model.precision=bf16-mixed"),
        ("model.quantize=4bit", "model.precision=bf16-mixed", "model.gradient_checkpointing=true"),
    ],
    ids=["bf16", "fp16", "8bit", "4bit-qlora-ckpt"],
)
def test_gpu_training_produces_a_servable_adapter(gpu_base, overrides, tmp_path):
    if any("quantize" in o for o in overrides):
        pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    manifest = _train(gpu_base, out, *overrides)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    results = manifest["results"]
    assert manifest["run"]["steps"] == 6 and manifest["run"]["device"].startswith("cuda")
    assert results["peak_cuda_mb"] > 0
    assert torch.isfinite(torch.tensor([results["train_loss_last_step"], results["eval_loss"]])).all()
    print(
        f"\n{' '.join(overrides)}: {results['train_tokens_per_s']} tokens/s, "
        f"peak CUDA {results['peak_cuda_mb']} MB, "
        f"eval loss {results['eval_loss_base']:.3f} -> {results['eval_loss']:.3f}"
    )

    # The adapter serves, on a bf16 base and on the quantized base it was trained against.
    quantize = {"8bit": "bitsandbytes8", "4bit": "bitsandbytes4"}.get(manifest["config"]["model"]["quantize"], "")
    for q in {"", quantize}:
        svc = _service(gpu_base, tmp_path, quantize=q, adapter_checkpoint="run", adapter_name="faq")
        code, body = read_output(svc.handle(_ask(svc, "faq")))
        assert code == 200 and body["details"]["adapter"] == "faq", body
