"""``loraship eval``: score the base model and adapters on the same documents with lm-eval.

    loraship eval --split-from runs/sagemaker_faqs --out runs/eval
    loraship eval --model default --adapter faqs=runs/sagemaker_faqs --data faq.csv --out runs/eval
    loraship eval --endpoint http://127.0.0.1:8080 --adapter faqs=runs/sagemaker_faqs --data ... --out ...

One linear recipe: read the documents, load the model(s), run lm-eval once per variant (the base
model, then each adapter) on the project's tasks (``evaluation/tasks/``, loaded through lm-eval's
TaskManager ``include_path``), check that every variant saw the same documents, pair the
per-document scores, bootstrap every adapter-minus-base difference, write ``eval.json`` and
``samples/*.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
from pathlib import Path
from typing import Annotated

from pydantic import field_validator, model_validator

from loraship.core.adapters import name_from_folder, parse_adapter_pairs
from loraship.core.hashing import adapter_sha256, file_sha256
from loraship.handler.settings import Flag, Settings

from .lm import BASE, EndpointLM, EvalError, LocalLM, LocalModel
from .stats import paired_bootstrap

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
GENERATION = "loraship_generation"
REFERENCE_LOSS = "loraship_reference_loss"
SCHEMA = "loraship.eval/1"
EVAL_FILE = "eval.json"
DOCS_FILE = "docs.jsonl"
SAMPLES_DIR = "samples"

__all__ = ["EvalConfig", "EvalError", "load_documents", "run_eval"]


class EvalConfig(Settings):
    """What ``loraship eval`` scores and how; ``problems()`` lists everything wrong at once. The fields
    are the command's flags, the docstrings their help."""

    model: str | None = None
    """'default', a local HF folder, or a hub id (default: the training run's base model with
    --split-from, else 'default')"""
    adapters: Annotated[dict[str, Path], Flag(name="--adapter", repeat=True, metavar="NAME=DIR")] = {}
    """a PEFT LoRA adapter to score against the base (repeatable); with --endpoint, NAME is the served
    name and DIR is hashed (default with --split-from: the training output itself)"""
    data: Path | None = None
    """JSONL (instruction, response, optional context) or a question,answer CSV"""
    split_from: Annotated[Path | None, Flag(metavar="TRAINING_OUTPUT")] = None
    """score a training run's held-out split/test.jsonl"""
    out: Path
    """folder for eval.json, docs.jsonl and samples/"""
    limit: int | None = None
    """score only the first N documents"""
    endpoint: Annotated[str | None, Flag(metavar="URL")] = None
    """score a running server over HTTP (every metric: reference loss from its prompt log-probabilities)"""
    concurrency: int = 4
    """requests in flight at once against --endpoint"""
    max_new_tokens: int | None = None
    """generation limit per answer (default: the task's, 128)"""
    batch_size: int = 8
    """prompts per forward pass in process"""
    bootstrap_iterations: Annotated[int, Flag(name="--bootstrap")] = 10_000
    """paired bootstrap resamples per delta"""
    confidence: Annotated[float, Flag(hidden=True)] = 0.95
    """The confidence level of the intervals."""
    seed: int = 0
    """seed of lm-eval's RNGs and of the bootstrap"""
    device: str | None = None
    """torch device in process (default: cuda if present, else cpu)"""

    @field_validator("adapters", mode="before")
    @classmethod
    def _pairs(cls, value):
        # Folders are checked by problems(), with everything else.
        return parse_adapter_pairs(value, check_folders=False) if isinstance(value, list) else value

    @model_validator(mode="before")
    @classmethod
    def _adapter_of_the_split(cls, data):
        """A training output holds its adapter: score that one when none is named."""
        if isinstance(data, dict) and not data.get("adapters") and data.get("split_from"):
            folder = Path(data["split_from"])
            if (folder / "adapter_config.json").is_file():
                data = {**data, "adapters": {name_from_folder(folder): folder.resolve()}}
        return data

    def problems(self) -> list[str]:
        out = []
        if not self.adapters:
            out.append("give --adapter NAME=DIR (or --split-from a training output that holds one)")
        if (self.data is None) == (self.split_from is None):
            out.append("give exactly one of --data FILE or --split-from TRAINING_OUTPUT")
        if self.limit is not None and self.limit < 1:
            out.append(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            out.append(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.concurrency < 1:
            out.append(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.batch_size < 1:
            out.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.bootstrap_iterations < 100:
            out.append(f"--bootstrap must be >= 100, got {self.bootstrap_iterations}")
        if not 0.5 < self.confidence < 1:
            out.append(f"--confidence must be in (0.5, 1), got {self.confidence}")
        if BASE in self.adapters:
            out.append(f"{BASE} names the base model; pick another adapter name")
        for name, path in self.adapters.items():
            if not Path(path).joinpath("adapter_config.json").is_file():
                out.append(f"adapter {name!r}: {path} has no adapter_config.json")
        return out


# ---- documents ---------------------------------------------------------------------------------


def load_documents(data: Path | None = None, split_from: Path | None = None) -> tuple[list[dict], dict]:
    """(rows, provenance): the rows to score and where they came from, with the file's sha256."""
    from loraship.training.data import DataError, check_rows, read_jsonl, read_qa_csv

    if split_from is not None:
        path = Path(split_from) / "split" / "test.jsonl"
        if not path.is_file():
            raise EvalError(f"{split_from} has no split/test.jsonl: is it a finished `loraship train` output?")
    else:
        path = Path(data)
        if not path.is_file():
            raise EvalError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = read_qa_csv(path)  # question,answer without a header: the FAQ layout
        elif suffix in (".jsonl", ".json"):
            rows = read_jsonl(path)
        else:
            raise EvalError(f"{path}: expected .jsonl (instruction/response rows) or .csv (question,answer)")
        rows, _ = check_rows(rows, source=str(path))
    except DataError as exc:
        raise EvalError(str(exc)) from None
    if not rows:
        raise EvalError(f"{path} holds no rows")
    info = {
        "source": "split_from" if split_from is not None else "data",
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "rows": len(rows),
        "training_run": str(Path(split_from).resolve()) if split_from is not None else None,
    }
    return rows, info


def training_manifest(split_from: Path | None) -> dict:
    if split_from is None:
        return {}
    path = Path(split_from) / "training_manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise EvalError(f"{path} is unreadable: {exc}") from None


def _write_docs(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            doc = {
                "doc_id": i,
                "instruction": row["instruction"],
                "context": row.get("context") or "",
                "response": row["response"],
                "row": row.get("row"),
            }
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


# ---- scoring -----------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_variant(lm, task_manager, tasks: list[str], cfg: EvalConfig) -> dict:
    """lm-eval on one variant; returns its results with per-sample records under ``samples``."""
    from lm_eval.evaluator import evaluate

    _seed_everything(cfg.seed)
    loaded = task_manager.load(tasks)
    for task in loaded["tasks"].values():
        task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=cfg.seed)
        if task.get_config("output_type") == "generate_until" and cfg.max_new_tokens is not None:
            task.set_config(key="generation_kwargs", value={"max_gen_toks": cfg.max_new_tokens}, update=True)
    results = evaluate(
        lm=lm,
        task_dict=loaded,
        limit=cfg.limit,
        bootstrap_iters=0,
        log_samples=True,
        apply_chat_template=True,
        fewshot_as_multiturn=False,
    )
    results["task_objects"] = loaded["tasks"]
    return results


def _sample_record(task: str, variant: str, sample: dict) -> dict:
    """One line of samples/<task>__<variant>.jsonl: the document, what was asked, what came back."""
    args = sample["arguments"][0]
    resp = sample["filtered_resps"][0]
    rec = {
        "doc_id": sample["doc_id"],
        "variant": variant,
        "doc": sample["doc"],
        "target": sample["target"],
        "prompt": args[0],
        "doc_hash": sample["doc_hash"],
        "prompt_hash": sample["prompt_hash"],
    }
    if task == REFERENCE_LOSS:
        rec.update(continuation=args[1], logprob=resp[0], is_greedy=bool(resp[1]), tokens=getattr(resp, "tokens", None))
    else:
        rec.update(
            response=str(resp),
            finish_reason=getattr(resp, "finish_reason", None),
            generated_tokens=getattr(resp, "generated_tokens", None),
            generation_kwargs=args[1],
        )
    for metric in sample["metrics"]:
        rec[metric] = sample[metric]
    return rec


def _clean(value):
    """JSON has no NaN: write non-finite numbers as null (the gate treats null as not a number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _versions() -> dict:
    import importlib.metadata
    import platform

    out = {"python": platform.python_version()}
    for dist in ("loraship", "lm_eval", "torch", "transformers", "peft", "datasets", "rouge-score", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def run_eval(cfg: EvalConfig, log=print) -> dict:
    """Score base and adapters as ``cfg`` says; write eval.json and samples/; return eval.json's content."""
    from lm_eval.tasks import TaskManager

    problems = cfg.problems()
    if problems:
        raise EvalError("; ".join(problems))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = dt.datetime.now(dt.UTC)

    # ---- documents and identities
    rows, data_info = load_documents(cfg.data, cfg.split_from)
    manifest = training_manifest(cfg.split_from)
    out = Path(cfg.out)
    (out / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    docs_path = out / DOCS_FILE
    _write_docs(rows, docs_path)
    data_info["docs_sha256"] = file_sha256(docs_path)
    adapters = {name: {"path": str(Path(p).resolve()), "sha256": adapter_sha256(p)} for name, p in cfg.adapters.items()}
    model_spec = cfg.model or (manifest.get("base_model") or {}).get("spec") or "default"

    # ---- models: one lm-eval model per variant, base first
    variants = [BASE, *cfg.adapters]
    if cfg.endpoint:
        tasks = [GENERATION, REFERENCE_LOSS]
        lms = {v: EndpointLM(cfg.endpoint, adapter=v, concurrency=cfg.concurrency) for v in variants}
        model_info = {"spec": None, "path": None, "endpoint": cfg.endpoint}
    else:
        tasks = [GENERATION, REFERENCE_LOSS]
        log(f"loraship eval: loading {model_spec} with {len(cfg.adapters)} adapter(s)")
        loaded = LocalModel(model_spec, {n: Path(p) for n, p in cfg.adapters.items()}, device=cfg.device)
        lms = {v: LocalLM(loaded=loaded, variant=v, batch_size=cfg.batch_size) for v in variants}
        model_info = {"spec": model_spec, "path": loaded.model_path, "endpoint": None, "device": str(loaded.device)}
    trained_on = (manifest.get("base_model") or {}).get("path")
    if trained_on and model_info.get("path") and Path(trained_on).resolve() != Path(model_info["path"]).resolve():
        log(f"loraship eval: warning: the training run used base model {trained_on}, scoring on {model_info['path']}")

    # ---- score every variant on the same documents
    task_manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"docs": str(docs_path.resolve())}
    )
    per_variant: dict[str, dict] = {}
    for variant, lm in lms.items():
        log(
            f"loraship eval: scoring {variant} on {len(rows) if cfg.limit is None else min(cfg.limit, len(rows))} "
            f"documents ({', '.join(tasks)})"
        )
        per_variant[variant] = _run_variant(lm, task_manager, tasks, cfg)

    # ---- pair, bootstrap, write
    files: dict[str, dict[str, str]] = {}
    metrics: dict[str, dict] = {}
    task_info = {}
    for task in tasks:
        records = {}
        for variant, res in per_variant.items():
            recs = [_sample_record(task, variant, s) for s in res["samples"][task]]
            recs.sort(key=lambda r: r["doc_id"])
            records[variant] = recs
            rel = f"{SAMPLES_DIR}/{task}.{variant}.jsonl"
            with open(out / rel, "w", encoding="utf-8") as f:
                for rec in recs:
                    f.write(json.dumps(_clean(rec), ensure_ascii=False, default=str) + "\n")
            files.setdefault(task, {})[variant] = rel
        base_hashes = [r["doc_hash"] for r in records[BASE]]
        for variant, recs in records.items():
            if [r["doc_hash"] for r in recs] != base_hashes:
                raise EvalError(f"task {task}: {variant} was not scored on the same documents as the base model")
        task_obj = per_variant[BASE]["task_objects"][task]
        yaml_path = TASKS_DIR / f"{task}.yaml"
        task_info[task] = {
            "yaml": str(yaml_path),
            "sha256": file_sha256(yaml_path),
            "version": per_variant[BASE]["versions"].get(task),
            "generation_kwargs": task_obj.get_config("generation_kwargs"),
        }
        for metric, higher in task_obj.higher_is_better().items():
            base_scores = [r[metric] for r in records[BASE]]
            entry = {
                "task": task,
                "higher_is_better": bool(higher),
                "n": len(base_scores),
                "base": per_variant[BASE]["results"][task].get(f"{metric},none"),
                "adapters": {},
            }
            for name in cfg.adapters:
                scores = [r[metric] for r in records[name]]
                boot = paired_bootstrap(
                    base_scores,
                    scores,
                    higher_is_better=bool(higher),
                    iterations=cfg.bootstrap_iterations,
                    seed=cfg.seed,
                    level=cfg.confidence,
                )
                entry["adapters"][name] = {
                    "value": per_variant[name]["results"][task].get(f"{metric},none"),
                    **{k: boot[k] for k in ("delta", "ci", "n", "better", "worse", "same")},
                }
            metrics[metric] = entry

    result = {
        "schema": SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "mode": "endpoint" if cfg.endpoint else "in_process",
        "model": model_info,
        "data": data_info,
        "adapters": adapters,
        "variants": variants,
        "tasks": task_info,
        "metrics": metrics,
        "bootstrap": {
            "method": "paired percentile over documents",
            "iterations": cfg.bootstrap_iterations,
            "confidence": cfg.confidence,
            "seed": cfg.seed,
        },
        "seeds": {"python": cfg.seed, "numpy": cfg.seed, "torch": cfg.seed, "fewshot": cfg.seed, "bootstrap": cfg.seed},
        "limit": cfg.limit,
        "versions": _versions(),
        "samples": files,
        "docs": DOCS_FILE,
        "training_manifest": {
            "path": str(Path(cfg.split_from, "training_manifest.json").resolve()),
            "adapter_sha256": (manifest.get("adapter") or {}).get("sha256"),
            "results": manifest.get("results"),
        }
        if manifest
        else None,
    }
    result = _clean(result)
    tmp = out / f".{EVAL_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / EVAL_FILE)
    return result
