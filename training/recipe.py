"""The LoRA recipe: instruction rows in, a PEFT adapter that ``loraship build`` serves out.

    loraship train --config training/configs/sagemaker_faqs.yaml [--output DIR] [--set key=value ...]

``train`` reads top to bottom: setup (:mod:`.setup`: tokenizer, data, model, LoRA, optimizer),
the loop (:mod:`.loop`: steps, evaluation, checkpoints, resume), save (:mod:`.save`: adapter and
manifest). The config is :mod:`.config`; the output folder's files are :mod:`.outputs`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from loraship.core.models import resolve_model

from .config import DEFAULT_CONFIG, TrainConfig, TrainConfigError, load_config
from .data import DataError
from .loop import CompletionLoss, LoopState, count_steps, restore, train_loop
from .outputs import TrainingError, latest_checkpoint, start_output
from .save import save_run
from .setup import (
    check_hardware,
    setup_accelerator,
    setup_data,
    setup_lora,
    setup_model,
    setup_optimizer,
    setup_scheduler,
    setup_tokenizer,
)


def train(cfg: TrainConfig, output: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict | None:
    """Run the recipe into ``output``; return the manifest it wrote there (None on other processes)."""
    from accelerate.utils import set_seed

    started = time.perf_counter()
    out = Path(output).resolve()
    check_hardware(cfg.model)
    accelerator = setup_accelerator(cfg.model.precision)
    main = accelerator.is_main_process
    checkpoint = start_output(out, cfg.to_dict(), resume=resume, overwrite=overwrite) if main else None
    accelerator.wait_for_everyone()
    if not main and resume:
        checkpoint = latest_checkpoint(out)
    set_seed(cfg.seed)

    # ---- setup
    model_path = resolve_model(cfg.model.path)
    tokenizer, new_token_ids = setup_tokenizer(model_path, cfg.template.special_tokens)
    data = setup_data(cfg.data, tokenizer, out / "split" if main else None)
    if main:
        print(
            f"loraship train: {data.rows} rows: {len(data.train)} to train on "
            f"({len(data.dropped_too_long)} longer than {cfg.data.max_length} tokens and "
            f"{data.dropped_empty} empty dropped), {data.test_rows} held out -> {out}",
            flush=True,
        )
    model = setup_model(cfg.model, model_path, len(tokenizer), accelerator.local_process_index)
    model = setup_lora(cfg.lora, model, new_token_ids)
    optimizer = setup_optimizer(cfg.optim, [p for p in model.parameters() if p.requires_grad])
    steps_per_epoch, total_steps = count_steps(len(data.train), cfg.train, accelerator.num_processes)
    scheduler = setup_scheduler(cfg.optim, optimizer, total_steps)
    loss_fn, optimizer = accelerator.prepare(CompletionLoss(model), optimizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0

    # ---- loop
    state = LoopState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scheduler, accelerator.num_processes)
    resumed_from = state.step if checkpoint is not None else None
    state = train_loop(
        accelerator,
        cfg,
        model,
        loss_fn,
        optimizer,
        scheduler,
        data.train,
        data.test,
        pad_id=pad_id,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        state=state,
        out=out,
        started=started,
    )

    # ---- save
    manifest = None
    if main:
        manifest = save_run(
            out,
            cfg,
            model,
            tokenizer,
            tokenizer_changed=bool(new_token_ids),
            model_path=model_path,
            data=data,
            state=state,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            resumed_from=resumed_from,
            processes=accelerator.num_processes,
            device=str(accelerator.device),
        )
    accelerator.wait_for_everyone()
    return manifest


def run_cli(
    config: str | None, output: str | None, overrides: list[str], *, resume: bool = False, overwrite: bool = False
) -> int:
    """``loraship train``: load and check the config, train, print the figures; 2 on a usage error."""
    config_path = Path(config) if config else DEFAULT_CONFIG
    out = Path(output) if output else Path("runs") / config_path.stem
    try:
        cfg = load_config(config_path, overrides)
        manifest = train(cfg, out, resume=resume, overwrite=overwrite)
    except (TrainConfigError, DataError, TrainingError) as exc:
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
