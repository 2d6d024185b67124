"""What a training run writes: the output folder's state, checkpoints, manifest, loss curve.

Every file is written to a temporary name and renamed into place, and every checkpoint is a
folder renamed into place, so a run killed at any moment leaves only whole files behind.
Checkpoints are named ``checkpoint-NNNNNN`` so ``loraship build`` skips them when it copies the
adapter folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MANIFEST = "training_manifest.json"
CONFIG = "training_config.yaml"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "state.pt")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# Imported by sagemaker_entry.py before the job installs anything: keep this module's top level stdlib-only.


class TrainingError(Exception):
    """A run that cannot start or continue; the message says what to change. (Not a LorashipError:
    this module's top level stays stdlib-only; run_cli turns it into exit 2.)"""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def prepare_output(out: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Check what ``out`` holds against the flags; return the checkpoint to resume from, if any.

    A finished run (it has a manifest) is never overwritten without ``overwrite``; an unfinished
    one needs ``resume`` or ``overwrite``; a non-empty folder that is no training output is left alone.
    """
    if resume and overwrite:
        raise TrainingError("--resume and --overwrite contradict each other; pick one")
    if not out.exists() or not any(out.iterdir()):
        if resume:
            raise TrainingError(f"nothing to resume in {out}: no earlier run there")
        return None
    finished = (out / MANIFEST).is_file()
    ours = finished or (out / CONFIG).is_file()
    if not ours:
        raise TrainingError(f"{out} is not empty and holds no loraship training run; choose another --output")
    if overwrite:
        shutil.rmtree(out)
        return None
    if finished:
        raise TrainingError(
            f"{out} already holds a finished adapter ({MANIFEST}); pass --overwrite to "
            "train again into it, or choose another --output"
        )
    if not resume:
        raise TrainingError(
            f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start again"
        )
    for stale in out.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return latest_checkpoint(out)


def start_output(out: Path, config: dict, *, resume: bool, overwrite: bool) -> Path | None:
    """:func:`prepare_output`, then write the run's config there (``--resume`` must not change
    it); return the checkpoint to resume from, if any."""
    import yaml

    checkpoint = prepare_output(out, resume=resume, overwrite=overwrite)
    saved = out / CONFIG
    if resume and saved.is_file():
        changed = _diff(yaml.safe_load(saved.read_text(encoding="utf-8")), config)
        if changed:
            raise TrainingError(f"--resume needs the config the run started with; changed: {', '.join(changed)}")
    out.mkdir(parents=True, exist_ok=True)
    # Written first: it marks the folder as a training run (see prepare_output).
    atomic_write_text(saved, yaml.safe_dump(config, sort_keys=False))
    return checkpoint


def _diff(before, after, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after))
        return [d for k in keys for d in _diff(before.get(k), after.get(k), f"{prefix}{k}.")]
    return [] if before == after else [f"{prefix.rstrip('.')} ({before!r} -> {after!r})"]


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a half-written one still ends in ``.tmp``)."""
    found = [p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, trainable: dict, optimizer_state: dict, state: dict, keep: int) -> Path:
    """Write ``checkpoint-<step>``: trainable weights, optimizer, and the loop state (schedule,
    RNG, position, metrics); then drop all but the newest ``keep``."""
    import torch
    from safetensors.torch import save_file

    final = out / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = out / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights_file, optimizer_file, state_file = CHECKPOINT_FILES
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / weights_file)
    torch.save(optimizer_state, tmp / optimizer_file)
    torch.save(state, tmp / state_file)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(trainable weights, optimizer state, loop state) of a checkpoint this module wrote."""
    import torch
    from safetensors.torch import load_file

    weights_file, optimizer_file, state_file = CHECKPOINT_FILES
    trainable = load_file(path / weights_file)
    # Our own files, holding RNG states and plain Python values: not untrusted input.
    optimizer_state = torch.load(path / optimizer_file, map_location="cpu", weights_only=False)
    state = torch.load(path / state_file, map_location="cpu", weights_only=False)
    return trainable, optimizer_state, state


def plot_losses(metrics: list[dict], path: Path) -> None:
    """Train loss per step and held-out loss at each evaluation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["train_loss"]) for m in metrics if "train_loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (per response token)", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out (per response token)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def library_versions() -> dict:
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version()}
    for dist in (
        "loraship",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "safetensors",
        "bitsandbytes",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
