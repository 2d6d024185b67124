"""The finished run: adapter (and tokenizer) moved into place, metrics, loss curve, and the
manifest last, whose presence means the run finished.

Apart from :mod:`.outputs` because that module's top level must stay stdlib-only (the SageMaker
entry script imports it before anything is installed).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

import torch

from loraship.core.hashing import file_sha256, tree_sha256

from .config import TrainConfig
from .loop import LoopState
from .outputs import MANIFEST, atomic_write_text, library_versions, plot_losses, write_jsonl
from .setup import Data


def save_run(
    out: Path,
    cfg: TrainConfig,
    model,
    tokenizer,
    *,
    tokenizer_changed: bool,
    model_path: str,
    data: Data,
    state: LoopState,
    total_steps: int,
    steps_per_epoch: int,
    resumed_from: int | None,
    processes: int,
    device: str,
) -> dict:
    """Write the finished run into ``out`` (the adapter file by file, the manifest last); return the manifest."""
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
    last_epoch = train_losses[-steps_per_epoch:]
    folder = _model_folder(model_path)
    manifest = {
        "base_model": {"spec": cfg.model.path, "path": model_path, "sha256": tree_sha256(folder) if folder else None},
        "data": {
            "path": cfg.data.path,
            "sha256": file_sha256(Path(cfg.data.path)),
            "rows": data.rows,
            "dropped_empty": data.dropped_empty,
            "train_rows": data.train_rows,
            "test_rows": data.test_rows,
            "train_examples": len(data.train),
            "dropped_too_long": len(data.dropped_too_long),
            "dropped_too_long_rows": sorted(data.dropped_too_long),
            "split": {"train": "split/train.jsonl", "test": "split/test.jsonl"},
        },
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": library_versions(),
        "run": {
            "steps": state.step,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "resumed_from_step": resumed_from,
            "processes": processes,
            "device": device,
        },
        "results": {
            "eval_loss_base": evals[0] if evals else None,
            "eval_loss": evals[-1],
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
