"""The LoRA recipe: instruction rows in, a PEFT adapter that ``loraship build`` serves out.

    loraship train --config training/configs/sagemaker_faqs.yaml [--output DIR] [--set key=value ...]

``train`` reads top to bottom: setup (tokenizer, data, model, optimizer), the loop, save. The
loop is plain PyTorch under ``accelerate`` (one process here, ``accelerate launch`` for several
GPUs) so that the loss can skip the vocabulary projection where nothing is scored, and so that a
checkpoint holds exactly what resuming needs: LoRA weights, optimizer, schedule, RNG, position.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from loraship.core.hashing import file_sha256, tree_sha256
from loraship.handler.pipelines.instruction import END_KEY, INSTRUCTION_KEY, RESPONSE_KEY

from .config import ConfigError, LoraArgs, ModelArgs, OptimArgs, TrainConfig, load_config
from .data import IGNORE_INDEX, DataError, check_rows, collate, encode_rows, read_rows, split_rows
from .outputs import (
    CONFIG,
    MANIFEST,
    TrainingError,
    atomic_write_text,
    library_versions,
    load_checkpoint,
    plot_losses,
    prepare_output,
    save_checkpoint,
    write_jsonl,
)

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "sagemaker_faqs.yaml"
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
class LoopState:
    """Everything about the loop's progress that a checkpoint carries besides weights and optimizer."""

    step: int = 0
    train_tokens: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0
    metrics: list = field(default_factory=list)


class CompletionLoss(torch.nn.Module):
    """Summed cross-entropy over the labelled positions only, and how many there were.

    The model body gives hidden states; only the positions whose next token is a label go
    through the vocabulary projection. Projecting every position of a batch (8 x 256 x 49k
    logits in fp32, plus their softmax gradient) is what dominated peak memory.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        lm = self.model.get_base_model()
        body = getattr(lm, lm.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][scored]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits, targets[scored], reduction="sum"), scored.sum()


def train(cfg: TrainConfig, output: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the recipe into ``output``; return the manifest it wrote there."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    started = time.perf_counter()
    out = Path(output).resolve()
    _check_hardware(cfg.model)
    # accelerate keeps one state per process and refuses a second Accelerator with another
    # precision; a second train() in one process (tests, notebooks) must be able to ask for one.
    # The process group (PartialState), if `accelerate launch` made one, is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision={"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[cfg.model.precision]
    )
    main = accelerator.is_main_process
    checkpoint = _setup_output(out, cfg, resume=resume, overwrite=overwrite) if main else None
    accelerator.wait_for_everyone()
    if not main and resume:
        from .outputs import latest_checkpoint

        checkpoint = latest_checkpoint(out)
    set_seed(cfg.seed)

    # ---- setup
    from loraship.core.models import resolve_model

    model_path = resolve_model(cfg.model.path)
    tokenizer, new_token_ids = _setup_tokenizer(model_path, cfg.template.special_tokens)
    data = _setup_data(cfg, tokenizer, out if main else None)
    if main:
        print(
            f"loraship train: {data['rows']} rows: {len(data['train'])} to train on "
            f"({len(data['dropped_too_long'])} longer than {cfg.data.max_length} tokens and "
            f"{data['dropped_empty']} empty dropped), {data['test_rows']} held out -> {out}",
            flush=True,
        )
    model = _setup_model(cfg.model, model_path, len(tokenizer), accelerator.local_process_index)
    model = _setup_lora(cfg.lora, model, new_token_ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _setup_optimizer(cfg.optim, trainable)
    steps_per_epoch = _steps_per_epoch(len(data["train"]), cfg, accelerator.num_processes)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    scheduler = _setup_scheduler(cfg.optim, optimizer, total_steps)
    loss_fn, optimizer = accelerator.prepare(CompletionLoss(model), optimizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    state = LoopState()
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, accelerator.num_processes)
    resumed_from = state.step if checkpoint is not None else None
    wall_before = state.wall_time  # earlier sessions' wall time, when resuming

    def evaluate_now() -> float:
        loss = _evaluate(accelerator, loss_fn, data["test"], cfg.train.batch_size, pad_id)
        state.metrics.append({"step": state.step, "eval_loss": loss})
        return loss

    # ---- train
    if state.step == 0:
        evaluate_now()  # LoRA starts as the identity: this is the base model's held-out loss
    # Explicitly, as from_pretrained leaves the base in eval mode (and a resumed run skips the
    # step-0 evaluation that would otherwise have flipped it).
    loss_fn.train()
    bar = _progress(total_steps, state.step, disable=not main)
    while state.step < total_steps:
        epoch, done_in_epoch = divmod(state.step, steps_per_epoch)
        batches = _epoch_batches(len(data["train"]), epoch, cfg, accelerator.process_index, accelerator.num_processes)
        for group in _step_groups(batches, cfg.train.grad_accum)[done_in_epoch:]:
            t0 = time.perf_counter()
            micro = [collate([data["train"][i] for i in b], pad_id) for b in group]
            loss, tokens = _train_step(
                accelerator, loss_fn, optimizer, scheduler, micro, trainable, cfg.optim.max_grad_norm
            )
            state.step += 1
            state.train_time += time.perf_counter() - t0
            state.train_tokens += tokens
            state.metrics.append({"step": state.step, "train_loss": loss, "lr": scheduler.get_last_lr()[0]})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{state.train_tokens / max(state.train_time, 1e-9):.0f}")
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and state.step < total_steps:
                loss = evaluate_now()
                if main:
                    bar.write(f"step {state.step}: held-out loss {loss:.4f}")
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 and state.step < total_steps:
                state.wall_time = wall_before + time.perf_counter() - started
                _checkpoint(accelerator, out, model, optimizer, scheduler, state, cfg.train.keep_checkpoints)
            if state.step >= total_steps:
                break
    bar.close()
    final_eval = evaluate_now()
    state.wall_time = wall_before + time.perf_counter() - started

    # ---- save
    manifest = None
    if main:
        manifest = _save(
            out,
            cfg,
            model,
            tokenizer,
            bool(new_token_ids),
            model_path,
            data,
            state,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            resumed_from=resumed_from,
            processes=accelerator.num_processes,
            device=str(accelerator.device),
            final_eval=final_eval,
        )
    accelerator.wait_for_everyone()
    return manifest


# ---- setup helpers, one object each


def _check_hardware(args: ModelArgs) -> None:
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


def _setup_output(out: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> Path | None:
    checkpoint = prepare_output(out, resume=resume, overwrite=overwrite)
    saved = out / CONFIG
    if resume and saved.is_file():
        before = yaml.safe_load(saved.read_text(encoding="utf-8"))
        changed = _diff(before, cfg.to_dict())
        if changed:
            raise TrainingError(f"--resume needs the config the run started with; changed: {', '.join(changed)}")
    out.mkdir(parents=True, exist_ok=True)
    # Written first: it marks the folder as a training run (see prepare_output).
    atomic_write_text(saved, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return checkpoint


def _setup_tokenizer(model_path: str, special_tokens: bool):
    """The base tokenizer, with the template markers as special tokens when asked; (tokenizer, new ids)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not special_tokens:
        return tokenizer, []
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS}, replace_extra_special_tokens=False)
    return tokenizer, list(range(before, len(tokenizer)))


def _setup_data(cfg: TrainConfig, tokenizer, out: Path | None) -> dict:
    """Read, check, split (and write the split), tokenise. Held-out rows are all kept, whatever
    their length, so evaluation scores exactly split/test.jsonl."""
    args = cfg.data
    rows = read_rows(args.path, args.format, args.columns, args.header)
    rows, n_empty = check_rows(rows, drop_empty=args.drop_empty, source=args.path)
    train_rows, test_rows = split_rows(rows, args.test_size, args.seed)
    if out is not None:
        (out / "split").mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "split" / "train.jsonl", train_rows)
        write_jsonl(out / "split" / "test.jsonl", test_rows)
    train, too_long = encode_rows(tokenizer, train_rows, args.max_length)
    test, _ = encode_rows(tokenizer, test_rows)
    if not train:
        raise DataError(f"all {len(train_rows)} training rows are longer than data.max_length={args.max_length}")
    return {
        "train": train,
        "test": test,
        "rows": len(rows) + n_empty,
        "dropped_empty": n_empty,
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "dropped_too_long": too_long,
    }


def _setup_model(args: ModelArgs, model_path: str, vocab_size: int, device_index: int):
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


def _setup_lora(args: LoraArgs, model, new_token_ids: list[int]):
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


def _setup_optimizer(args: OptimArgs, params: list):
    if args.name == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.betas), weight_decay=args.weight_decay)


def _setup_scheduler(args: OptimArgs, optimizer, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(args.scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total_steps)


# ---- loop helpers


def _steps_per_epoch(n_train: int, cfg: TrainConfig, world: int) -> int:
    per_rank = n_train // world if world > 1 else n_train
    return math.ceil(math.ceil(per_rank / cfg.train.batch_size) / cfg.train.grad_accum)


def _epoch_batches(n_train: int, epoch: int, cfg: TrainConfig, rank: int, world: int) -> list[list[int]]:
    """Example indices of each micro-batch of ``epoch`` on this process.

    The order is a pure function of (seed, epoch), so resuming at step k of an epoch replays the
    same batches without saving a sampler. Ranks get equal shares so DDP steps stay in lockstep.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(n_train, generator=g).tolist()
    order = order[: len(order) - len(order) % world][rank::world]
    bs = cfg.train.batch_size
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def _step_groups(batches: list, grad_accum: int) -> list[list]:
    return [batches[i : i + grad_accum] for i in range(0, len(batches), grad_accum)]


def _train_step(accelerator, loss_fn, optimizer, scheduler, micro: list[dict], params, max_grad_norm):
    """One optimizer step over ``micro`` batches (on every process); returns (mean loss per label,
    tokens seen), both over all processes."""
    # Divide by the step's label count over all micro-batches and processes, so every response
    # token weighs the same wherever it landed (a mean of per-batch means would not). DDP averages
    # gradients over processes, hence the factor num_processes.
    local = torch.tensor(
        [
            sum(int((m["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro),
            sum(int(m["attention_mask"].sum()) for m in micro),
        ],
        device=accelerator.device,
    )
    n_labels, tokens = accelerator.reduce(local, "sum").tolist()
    scale = accelerator.num_processes / n_labels
    total = torch.zeros(1, dtype=torch.float64, device=accelerator.device)
    for i, batch in enumerate(micro):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        last = i == len(micro) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(loss_fn):
            loss_sum, _ = loss_fn(**batch)
            accelerator.backward(loss_sum * scale)
        total += loss_sum.detach().double()
    if max_grad_norm:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the schedule waits too
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(total, "sum")) / n_labels, int(tokens)


@torch.no_grad()
def _evaluate(accelerator, loss_fn, examples: list[dict], batch_size: int, pad_id: int) -> float:
    """Mean teacher-forced loss per response token over the held-out rows (all processes together)."""
    module = accelerator.unwrap_model(loss_fn)
    module.eval()
    shard = examples[accelerator.process_index :: accelerator.num_processes]
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for i in range(0, len(shard), batch_size):
        batch = {k: v.to(accelerator.device) for k, v in collate(shard[i : i + batch_size], pad_id).items()}
        loss_sum, count = module(**batch)
        sums += torch.stack([loss_sum.double(), count.double()])
    module.train()
    sums = accelerator.reduce(sums, "sum")
    return float(sums[0] / sums[1])


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True)


def _trainable_state(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _checkpoint(accelerator, out, model, optimizer, scheduler, state: LoopState, keep: int) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rng = {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        try:
            import numpy as np

            rng["numpy"] = np.random.get_state()
        except ImportError:
            pass
        loop = {
            "step": state.step,
            "processes": accelerator.num_processes,
            "train_tokens": state.train_tokens,
            "train_time": state.train_time,
            "wall_time": state.wall_time,
            "metrics": state.metrics,
            "scheduler": scheduler.state_dict(),
            "rng": rng,
        }
        save_checkpoint(out, state.step, _trainable_state(model), optimizer.state_dict(), loop, keep)
    accelerator.wait_for_everyone()


def _restore(path: Path, model, optimizer, scheduler, processes: int) -> LoopState:
    """Put weights, optimizer, schedule and RNG back as they were when ``path`` was written."""
    weights, optimizer_state, loop = load_checkpoint(path)
    if loop["processes"] != processes:
        # Each process's share of an epoch depends on how many there are.
        raise TrainingError(
            f"checkpoint {path} was written by {loop['processes']} process(es); resume it with "
            f"as many (this run has {processes})"
        )
    params = _trainable_state(model)
    missing = sorted(set(params) - set(weights))
    if missing:
        raise TrainingError(f"checkpoint {path} lacks {len(missing)} trainable tensor(s), e.g. {missing[0]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(loop["scheduler"])
    rng = loop["rng"]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "numpy" in rng:
        import numpy as np

        np.random.set_state(rng["numpy"])
    return LoopState(
        step=loop["step"],
        train_tokens=loop["train_tokens"],
        train_time=loop["train_time"],
        wall_time=loop["wall_time"],
        metrics=list(loop["metrics"]),
    )


# ---- save


def _save(
    out: Path,
    cfg: TrainConfig,
    model,
    tokenizer,
    tokenizer_changed: bool,
    model_path: str,
    data: dict,
    state: LoopState,
    **run,
) -> dict:
    """Adapter (and tokenizer) moved into place file by file, then the loss curve, and the
    manifest last: its presence means the run finished."""
    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=out))
    try:
        # With new marker tokens the base must be resized to load the adapter, and the rows it
        # would draw are random: the adapter carries the embedding matrices it was trained with.
        model.save_pretrained(tmp / "adapter", save_embedding_layers=tokenizer_changed)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            os.replace(tmp / "adapter" / name, out / name)
        if tokenizer_changed:
            tokenizer.save_pretrained(tmp / "tokenizer")
            for f in (tmp / "tokenizer").iterdir():
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    write_jsonl(out / "metrics.jsonl", state.metrics)
    plot_losses(state.metrics, out / "loss_curve.png")
    evals = [m["eval_loss"] for m in state.metrics if "eval_loss" in m]
    train_losses = [m["train_loss"] for m in state.metrics if "train_loss" in m]
    last_epoch = train_losses[-run["steps_per_epoch"] :]
    folder = _model_folder(model_path)
    manifest = {
        "base_model": {"spec": cfg.model.path, "path": model_path, "sha256": tree_sha256(folder) if folder else None},
        "data": {
            "path": cfg.data.path,
            "sha256": file_sha256(Path(cfg.data.path)),
            "rows": data["rows"],
            "dropped_empty": data["dropped_empty"],
            "train_rows": data["train_rows"],
            "test_rows": data["test_rows"],
            "train_examples": len(data["train"]),
            "dropped_too_long": len(data["dropped_too_long"]),
            "dropped_too_long_rows": sorted(data["dropped_too_long"]),
            "split": {"train": "split/train.jsonl", "test": "split/test.jsonl"},
        },
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": library_versions(),
        "run": {
            "steps": state.step,
            "total_steps": run["total_steps"],
            "steps_per_epoch": run["steps_per_epoch"],
            "resumed_from_step": run["resumed_from"],
            "processes": run["processes"],
            "device": run["device"],
        },
        "results": {
            "eval_loss_base": evals[0] if evals else None,
            "eval_loss": run["final_eval"],
            "train_loss_last_epoch": sum(last_epoch) / len(last_epoch) if last_epoch else None,
            "train_loss_last_step": train_losses[-1] if train_losses else None,
            "train_tokens": state.train_tokens,
            "train_time_s": round(state.train_time, 2),
            "train_tokens_per_s": round(state.train_tokens / state.train_time, 1) if state.train_time else None,
            "wall_time_s": round(state.wall_time, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        },
        "adapter": {
            "file": "adapter_model.safetensors",
            "sha256": file_sha256(out / "adapter_model.safetensors"),
            "tokenizer_saved": tokenizer_changed,
        },
        "loss_curve": "loss_curve.png",
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _model_folder(model_path: str) -> Path | None:
    """The files the base model was loaded from: its folder, or a hub id's cached snapshot."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_path, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _diff(before, after, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in _diff(before.get(k), after.get(k), f"{prefix}{k}.")]
    return [] if before == after else [f"{prefix.rstrip('.')} ({before!r} -> {after!r})"]


def run_cli(
    config: str | None, output: str | None, overrides: list[str], *, resume: bool = False, overwrite: bool = False
) -> int:
    """``loraship train``: load and check the config, train, print the figures; 2 on a usage error."""
    config_path = Path(config) if config else DEFAULT_CONFIG
    out = Path(output) if output else Path("runs") / config_path.stem
    try:
        cfg = load_config(config_path, overrides)
        manifest = train(cfg, out, resume=resume, overwrite=overwrite)
    except (ConfigError, DataError, TrainingError) as exc:
        print(f"loraship train: error: {exc}", file=sys.stderr)
        return 2
    if manifest is not None:
        r = manifest["results"]
        print(
            f"loraship train: adapter in {out.resolve()}\n"
            f"  held-out loss per response token: base {r['eval_loss_base']:.4f} -> adapter {r['eval_loss']:.4f}\n"
            f"  {manifest['run']['steps']} steps, {r['train_tokens_per_s']} tokens/s, "
            f"wall {r['wall_time_s']:.0f}s, peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    return 0
