"""The loop: optimizer steps over a fixed batch order, held-out evaluation, checkpoints, resume.

Plain PyTorch under ``accelerate`` (one process here, ``accelerate launch`` for several GPUs) so
that the loss can skip the vocabulary projection where nothing is scored, and so that a
checkpoint holds exactly what resuming needs: LoRA weights, optimizer, schedule, RNG, position.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TrainArgs, TrainConfig
from .data import IGNORE_INDEX, collate
from .outputs import TrainingError, load_checkpoint, save_checkpoint


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


def train_loop(
    accelerator,
    cfg: TrainConfig,
    model,
    loss_fn,
    optimizer,
    scheduler,
    train: list[dict],
    test: list[dict],
    *,
    pad_id: int,
    total_steps: int,
    steps_per_epoch: int,
    state: LoopState,
    out: Path,
    started: float,
) -> LoopState:
    """Train from ``state`` (fresh, or a checkpoint's) to ``total_steps``; return the final state.

    The held-out rows are scored before the first step, every ``train.eval_every`` steps and
    after the last; a checkpoint goes to ``out`` every ``train.checkpoint_every`` steps.
    """
    main = accelerator.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    wall_before = state.wall_time  # earlier sessions' wall time, when resuming

    def evaluate_now() -> float:
        loss = _evaluate(accelerator, loss_fn, test, cfg.train.batch_size, pad_id)
        state.metrics.append({"step": state.step, "eval_loss": loss})
        return loss

    if state.step == 0:
        evaluate_now()  # LoRA starts as the identity: this is the base model's held-out loss
    # Explicitly, as from_pretrained leaves the base in eval mode (and a resumed run skips the
    # step-0 evaluation that would otherwise have flipped it).
    loss_fn.train()
    bar = _progress(total_steps, state.step, disable=not main)
    while state.step < total_steps:
        epoch, done_in_epoch = divmod(state.step, steps_per_epoch)
        batches = _epoch_batches(len(train), epoch, cfg, accelerator.process_index, accelerator.num_processes)
        for group in _step_groups(batches, cfg.train.grad_accum)[done_in_epoch:]:
            t0 = time.perf_counter()
            micro = [collate([train[i] for i in b], pad_id) for b in group]
            loss, tokens = _train_step(
                accelerator, loss_fn, optimizer, scheduler, micro, params, cfg.optim.max_grad_norm
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
    evaluate_now()
    state.wall_time = wall_before + time.perf_counter() - started
    return state


def count_steps(n_train: int, args: TrainArgs, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, steps of the run) over ``n_train`` examples shared by ``world`` processes."""
    per_rank = n_train // world if world > 1 else n_train
    per_epoch = math.ceil(math.ceil(per_rank / args.batch_size) / args.grad_accum)
    return per_epoch, args.max_steps or args.epochs * per_epoch


def restore(path: Path, model, optimizer, scheduler, processes: int) -> LoopState:
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


# ---- helpers


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
