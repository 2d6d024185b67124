"""Tiny random causal LMs with a tokenizer trained in the test, saved as plain HF folders."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig, MistralConfig, PreTrainedTokenizerFast

from loraship.handler.pipelines.instruction import END_KEY, INSTRUCTION_KEY, INTRO_BLURB, RESPONSE_KEY
from loraship.training.data import FAQ_CSV, read_qa_csv

EOS = "<|endoftext|>"


def train_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the FAQ text and the template, like GPT-NeoX's tokenizer."""
    texts = [INTRO_BLURB, INSTRUCTION_KEY, RESPONSE_KEY, END_KEY]
    for row in read_qa_csv(FAQ_CSV):
        texts += [row["instruction"], row["response"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def save_tiny_model(folder: Path, arch: str = "gpt_neox", seed: int = 0) -> Path:
    """Build and save a random ``gpt_neox`` (Dolly's architecture), ``llama`` or ``mistral`` model."""
    import torch

    torch.manual_seed(seed)
    tokenizer = train_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    if arch == "gpt_neox":
        config = GPTNeoXConfig(**common)
    elif arch == "llama":
        config = LlamaConfig(num_key_value_heads=2, **common)
    elif arch == "mistral":  # sliding-window attention over the last 16 tokens
        config = MistralConfig(num_key_value_heads=2, sliding_window=16, **common)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def save_random_adapter(
    base: Path, folder: Path, seed: int = 1, r: int = 4, alpha: int = 16, target_modules=None
) -> Path:
    """A LoRA adapter with random (non-zero) A and B, so it visibly changes the base model's output."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    if target_modules is None:
        target_modules = ["query_key_value"] if model.config.model_type == "gpt_neox" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder
