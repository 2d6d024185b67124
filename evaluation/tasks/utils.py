"""Functions the task YAML files in this folder name with ``!function utils.<name>``.

lm-eval imports this file by path, so it only imports installed packages (the template from
``handler``, the metrics from ``evaluation.metrics``) and keeps no state of its own.
"""

from __future__ import annotations

import json
import math

from loraship.evaluation.metrics import exact_match, rouge_l, token_f1
from loraship.handler.pipelines.instruction import format_response

#: ``finish_reason`` values of an answer that stopped by itself (### End, or EOS) before the limit.
ENDED = ("stop", "eos")


def load_docs(docs: str | None = None, **_metadata):
    """The documents to score: a JSON Lines file of instruction / context / response rows.

    Its path comes in the task metadata (``TaskManager(metadata={"docs": PATH})``), which lm-eval
    passes to ``custom_dataset``; nothing is downloaded and no dataset cache is written.
    """
    import datasets

    if not docs:
        raise ValueError(
            "the loraship tasks need the documents' path: TaskManager(metadata={'docs': PATH}) "
            "(loraship eval writes it)"
        )
    rows = []
    with open(docs, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append(
                    {
                        "doc_id": int(row["doc_id"]),
                        "instruction": row["instruction"],
                        "context": row.get("context") or "",
                        "response": row["response"],
                        "row": int(row.get("row") or 0),
                    }
                )
    if not rows:
        raise ValueError(f"{docs} holds no documents")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def reference_completion(doc: dict) -> str:
    """What the model should continue the prompt with: the response and the ``### End`` marker."""
    return format_response(doc["response"])


def process_generation(doc: dict, results: list) -> dict:
    """ROUGE-L F1, token F1 and exact match of one answer, and whether it stopped by itself.

    ``end_marker_rate`` needs the answer's ``finish_reason``, which the loraship model types
    attach to it; from any other model type it is NaN, and a gate on it fails.
    """
    answer = results[0]
    reference = doc["response"]
    reason = getattr(answer, "finish_reason", None)
    return {
        "rougeL": rouge_l(answer, reference),
        "token_f1": token_f1(answer, reference),
        "exact_match": exact_match(answer, reference),
        "end_marker_rate": math.nan if reason is None else float(reason in ENDED),
    }


def process_reference_loss(doc: dict, results: list) -> dict:
    """Mean negative log-likelihood per token of the reference completion, teacher-forced.

    Needs the token count the loraship model types attach to the log-likelihood; NaN otherwise.
    """
    loglikelihood = results[0]
    tokens = getattr(loglikelihood, "tokens", None)
    return {"reference_loss": -loglikelihood[0] / tokens if tokens else math.nan}
