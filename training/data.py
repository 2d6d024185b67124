"""Instruction data sets: rows of instruction / context / response."""

from __future__ import annotations

import csv
from pathlib import Path


class DataError(Exception):
    pass


def read_qa_csv(path: str | Path) -> list[dict]:
    """A question,answer CSV without a header (the FAQ file); a UTF-8 BOM is tolerated."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}: row {n} has {len(row)} column(s); expected question,answer")
            rows.append({"instruction": row[0].strip(), "context": "", "response": row[1].strip()})
    return rows
