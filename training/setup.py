"""Setup: what the loop trains, one object per function, each built from its config section.

Accelerator, tokenizer, data, the frozen base, LoRA on it, optimizer, schedule. Nothing here
trains; :mod:`.loop` does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from loraship.handler.pipelines.instruction import END_KEY, INSTRUCTION_KEY, RESPONSE_KEY

from .config import DataArgs, LoraArgs, ModelArgs, OptimArgs
from .data import DataError, check_rows, encode_rows, read_rows, split_rows
from .outputs import TrainingError, write_jsonl

MARKERS = [INSTRUCTION_KEY, RESPONSE_KEY, END_KEY]
DEFAULT_TARGETS = {
    "gpt_neox": ["query_key_value"],
    "gpt2": ["c_attn"],
    **{
        t: ["q_proj", "k_proj", "v_proj", "o_proj"]
        for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")
    },
}
"""LoRA on the attention projections, per ``config.model_type``, as the Dolly tutorial did."""


@dataclass
class Data:
    """The tokenised examples and the counts the manifest reports."""

    train: list[dict]
    test: list[dict]
    rows: int
    """Rows read, empty ones included."""
    dropped_empty: int
    train_rows: int
    test_rows: int
    dropped_too_long: list[int]
    """Row numbers of the training rows longer than data.max_length."""


def check_hardware(args: ModelArgs) -> None:
    """Fail before loading anything when the config asks for what this machine lacks."""
    if args.quantize != "none":
        if not torch.cuda.is_available():
            raise TrainingError(
                f"model.quantize={args.quantize} loads the base with bitsandbytes, which needs a "
                "CUDA GPU; this machine has none: set model.quantize=none"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingError(f"model.quantize={args.quantize} needs bitsandbytes: pip install 'loraship[gpu]'")
    if args.precision == "fp16-mixed" and not torch.cuda.is_available():
        raise TrainingError("model.precision=fp16-mixed needs a CUDA GPU; use bf16-mixed or fp32 on CPU")


def setup_accelerator(precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one state per process and refuses a second Accelerator with another
    # precision; a second train() in one process (tests, notebooks) must be able to ask for one.
    # The process group (PartialState), if `accelerate launch` made one, is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision={"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[precision])


def setup_tokenizer(model_path: str, special_tokens: bool):
    """The base tokenizer, with the template markers as special tokens when asked; (tokenizer, new ids)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not special_tokens:
        return tokenizer, []
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS}, replace_extra_special_tokens=False)
    return tokenizer, list(range(before, len(tokenizer)))


def setup_data(args: DataArgs, tokenizer, split_dir: Path | None) -> Data:
    """Read, check, split (writing the split to ``split_dir``), tokenise. Held-out rows are all
    kept, whatever their length, so evaluation scores exactly split/test.jsonl."""
    rows = read_rows(args.path, args.format, args.columns, args.header)
    rows, n_empty = check_rows(rows, drop_empty=args.drop_empty, source=args.path)
    train_rows, test_rows = split_rows(rows, args.test_size, args.seed)
    if split_dir is not None:
        split_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(split_dir / "train.jsonl", train_rows)
        write_jsonl(split_dir / "test.jsonl", test_rows)
    train, too_long = encode_rows(tokenizer, train_rows, args.max_length)
    test, _ = encode_rows(tokenizer, test_rows)
    if not train:
        raise DataError(f"all {len(train_rows)} training rows are longer than data.max_length={args.max_length}")
    return Data(
        train=train,
        test=test,
        rows=len(rows) + n_empty,
        dropped_empty=n_empty,
        train_rows=len(train_rows),
        test_rows=len(test_rows),
        dropped_too_long=too_long,
    )


def setup_model(args: ModelArgs, model_path: str, vocab_size: int, device_index: int):
    """The frozen base: fp32 (or bitsandbytes on a GPU), resized for new tokens, optionally
    with gradient checkpointing."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32}
    if args.quantize != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=args.quantize == "8bit",
            load_in_4bit=args.quantize == "4bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device_index}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.use_cache = False
    if vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    # Non-reentrant checkpointing works although the frozen embeddings' output needs no grad.
    ckpt_kwargs = {"use_reentrant": False}
    if args.quantize != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif args.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    return model


def setup_lora(args: LoraArgs, model, new_token_ids: list[int]):
    """LoRA on the attention projections; new marker tokens get trainable embedding rows (peft
    ties the output rows to them when the model ties its embeddings)."""
    from peft import LoraConfig, get_peft_model

    targets = args.target_modules or DEFAULT_TARGETS.get(model.config.model_type)
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise TrainingError(
            f"no default LoRA target modules for model type {model.config.model_type!r}; set "
            f"lora.target_modules (its Linear layers: {', '.join(linear)})"
        )
    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
        trainable_token_indices=new_token_ids or None,
    )
    return get_peft_model(model, config)


def setup_optimizer(args: OptimArgs, params: list):
    if args.name == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay)


def setup_scheduler(args: OptimArgs, optimizer, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(args.scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total_steps)
