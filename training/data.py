"""Instruction data sets: rows of instruction / context / response, split, tokenised, batched.

Every row keeps ``row``, its 1-based record number in the source file (a CSV header counts as
record 1, a JSONL line as its line number), so errors and the written split point back at it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from loraship.core.errors import LorashipError
from loraship.handler.pipelines.instruction import format_prompt, format_response

FIELDS = ("instruction", "context", "response")
REQUIRED = ("instruction", "response")
IGNORE_INDEX = -100
#: The Amazon SageMaker FAQs (the tutorial's dataset), shipped as package data.
FAQ_CSV = Path(__file__).resolve().parent / "data" / "amazon_sagemaker_faqs.csv"
"""Label of a position that is not scored (prompt and padding); cross_entropy's ignore_index."""


class DataError(LorashipError):
    """A data file that cannot be read as rows (exit 2)."""


def read_qa_csv(path: str | Path, columns: dict | None = None, header: bool | str = "auto") -> list[dict]:
    """Rows of a CSV file; a UTF-8 BOM is tolerated.

    Without ``columns`` it is the FAQ layout: question,answer and no header. ``columns`` maps each
    field to a header name or a 0-based position; ``header="auto"`` treats the first record as a
    header when it holds the named instruction and response columns (a named context column
    missing from the header reads as empty).
    """
    columns = dict(columns) if columns is not None else {"instruction": 0, "response": 1}
    with open(path, encoding="utf-8-sig", newline="") as f:
        records = [(n, rec) for n, rec in enumerate(csv.reader(f), start=1) if rec]
    missing = [f for f in REQUIRED if f not in columns]
    if missing:
        raise DataError(f"{path}: columns map no column for {', '.join(missing)}")
    names = {field: col for field, col in columns.items() if isinstance(col, str)}
    if header == "auto":
        first = [c.strip() for c in records[0][1]] if records else []
        header = any(f in names for f in REQUIRED) and all(names[f] in first for f in REQUIRED if f in names)
    positions = {field: col for field, col in columns.items() if isinstance(col, int)}
    if header:
        if not records:
            raise DataError(f"{path}: empty file, expected a header row")
        head = [c.strip() for c in records[0][1]]
        missing = [col for field, col in names.items() if col not in head and field in REQUIRED]
        if missing:
            raise DataError(f"{path}: the header {head} has no column(s) {', '.join(map(repr, missing))}")
        positions.update({field: head.index(col) for field, col in names.items() if col in head})
        records = records[1:]
    elif names:
        raise DataError(
            f"{path}: columns {sorted(names.values())} are named, but the file has no header row "
            "(map fields to 0-based positions instead)"
        )
    rows = []
    for n, rec in records:
        need = max(positions[f] for f in REQUIRED) + 1
        if len(rec) < need:
            raise DataError(f"{path}: row {n} has {len(rec)} column(s); expected at least {need}")
        row = {field: rec[pos].strip() if pos < len(rec) else "" for field, pos in positions.items()}
        rows.append(_row(row, n))
    return rows


def read_jsonl(path: str | Path, columns: dict | None = None) -> list[dict]:
    """Rows of a JSON Lines file (e.g. Dolly-15k: instruction, context, response, category)."""
    columns = dict(columns) if columns is not None else {f: f for f in FIELDS}
    bad = [field for field, col in columns.items() if not isinstance(col, str)]
    if bad:
        raise DataError(f"{path}: JSON Lines columns are keys, not positions: fix data.columns {', '.join(bad)}")
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: line {n} is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n} is a {type(obj).__name__}, expected an object")
            row = {}
            for field, key in columns.items():
                value = obj.get(key)
                if value is None and field in REQUIRED and key not in obj:
                    raise DataError(f"{path}: line {n} has no key {key!r} (for {field})")
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{path}: line {n}: {key!r} is a {type(value).__name__}, expected a string")
                row[field] = (value or "").strip()
            rows.append(_row(row, n))
    return rows


def read_rows(
    path: str | Path, format: str = "auto", columns: dict | None = None, header: bool | str = "auto"
) -> list[dict]:
    """Rows of a CSV or JSON Lines file; ``format="auto"`` goes by the suffix. ``columns``
    defaults to Dolly-15k's names (instruction, context, response) for both formats."""
    path = Path(path)
    columns = columns if columns is not None else {f: f for f in FIELDS}
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if format == "auto":
        format = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(path.suffix.lower(), "")
        if not format:
            raise DataError(f"{path}: cannot tell the format from the suffix; set data.format to csv or jsonl")
    if format == "csv":
        return read_qa_csv(path, columns, header)
    return read_jsonl(path, columns)


def check_rows(rows: list[dict], *, drop_empty: bool = False, source: str = "data") -> tuple[list[dict], int]:
    """Rows with an empty instruction or response: an error naming them, or dropped and counted."""
    empty = [r for r in rows if not r["instruction"] or not r["response"]]
    if empty and not drop_empty:
        where = ", ".join(
            f"row {r['row']} ({'instruction' if not r['instruction'] else 'response'})" for r in empty[:10]
        )
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise DataError(
            f"{source}: empty instruction or response in {where}{more}; set data.drop_empty=true to drop such rows"
        )
    kept = [r for r in rows if r["instruction"] and r["response"]]
    return kept, len(empty)


def split_rows(rows: list[dict], test_size: int | float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) by the permutation ``datasets.Dataset.train_test_split(test_size, seed=seed)`` draws."""
    import numpy as np

    n = len(rows)
    n_test = math.ceil(test_size * n) if isinstance(test_size, float) else test_size
    if not 1 <= n_test < n:
        raise DataError(f"test_size={test_size} leaves {n - n_test} of {n} rows for training")
    perm = np.random.default_rng(seed).permutation(n)
    return [rows[i] for i in perm[n_test:]], [rows[i] for i in perm[:n_test]]


def encode_example(tokenizer, row: dict) -> dict:
    """Token ids of prompt + response + end marker + EOS, with labels only on what follows the prompt.

    Prompt and completion are tokenised separately, so the mask boundary is exact even where a
    joint tokenisation would merge tokens across it, and the prompt ids are exactly what serving
    feeds the model. EOS is appended as a label so the model learns to stop; labels come from
    these positions, never from pad ids, because pad is often EOS.
    """
    prompt = tokenizer(format_prompt(row["instruction"], row.get("context")), add_special_tokens=True)["input_ids"]
    completion = tokenizer(format_response(row["response"]), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    return {
        "input_ids": list(prompt) + list(completion),
        "labels": [IGNORE_INDEX] * len(prompt) + list(completion),
        "row": row.get("row"),
    }


def encode_rows(tokenizer, rows: list[dict], max_length: int | None = None) -> tuple[list[dict], list[int]]:
    """Encoded examples, and the row numbers dropped for being longer than ``max_length`` tokens.

    Cutting a long example would cut its response and end marker (or all its labels), teaching
    the model not to stop; such rows are left out instead.
    """
    examples, dropped = [], []
    for row in rows:
        ex = encode_example(tokenizer, row)
        if max_length is not None and len(ex["input_ids"]) > max_length:
            dropped.append(row.get("row"))
        else:
            examples.append(ex)
    return examples, dropped


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded tensors; padding is masked out of attention and labels."""
    import torch

    width = max(len(ex["input_ids"]) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[i, :n] = torch.tensor(ex["input_ids"])
        labels[i, :n] = torch.tensor(ex["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _row(fields: dict, n: int) -> dict:
    return {
        "instruction": fields.get("instruction", ""),
        "context": fields.get("context", ""),
        "response": fields.get("response", ""),
        "row": n,
    }
