"""What is sent: each request's prompt, adapter and output length.

Prompts come from a data set (JSONL: instruction/response rows, ShareGPT-style ``conversations``, OpenAI-style
``messages`` or ``prompt``/``completion``; a JSON array of the same; a CSV in the FAQ layout), the built-in FAQ
questions, or are synthetic: words of an exact number of tokens (``tokens.Tokens``), the length drawn per request
from a normal distribution. A shared prefix (``prefixes`` texts of ``prefix_tokens`` tokens) can go before each
prompt, each prefix reused in turn. Output lengths are one value, one of several, a normal draw around one value,
or the data set's own reference answer's length (as vLLM's ShareGPT benchmark). Every draw is seeded: the same
seed and level give the same requests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from loraship.core.errors import LorashipError

BASE = "__base__"
MIXES = ("round-robin", "uniform", "skewed")
HUMAN = ("human", "user")
ASSISTANT = ("gpt", "assistant", "chatgpt", "bard", "bing", "model")


class WorkloadError(LorashipError):
    pass


@dataclass(frozen=True)
class Row:
    """One prompt of a data set, with the reference answer that follows it when the data set has one."""

    prompt: str
    reference: str | None = None


@dataclass(frozen=True)
class Item:
    """One request to send."""

    prompt: str
    adapter: str
    max_new_tokens: int
    prompt_tokens: int | None = None  # the prompt's tokens by the tokenizer (client side); None without one
    prefix: int | None = None  # which shared prefix it starts with


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _turns(turns, where: str, role_key: str, text_key: str) -> Row | None:
    """The first human turn and the assistant turn right after it (ShareGPT's first exchange)."""
    if not isinstance(turns, list):
        raise WorkloadError(f"{where}: expected a list of turns, got {type(turns).__name__}")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise WorkloadError(f"{where}: turn {i + 1} is a {type(turn).__name__}, expected an object")
        if str(turn.get(role_key, "")).lower() in HUMAN and (prompt := _text(turn.get(text_key))):
            nxt = turns[i + 1] if i + 1 < len(turns) and isinstance(turns[i + 1], dict) else {}
            reply = _text(nxt.get(text_key)) if str(nxt.get(role_key, "")).lower() in ASSISTANT else None
            return Row(prompt, reply)
    return None


def _row(obj, where: str) -> tuple[Row | None, str]:
    """A data set record as (Row or None when it has no prompt, its format's name)."""
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where} is a {type(obj).__name__}, expected an object")
    if "conversations" in obj:
        return _turns(obj["conversations"], where, "from", "value"), "sharegpt"
    if "messages" in obj:
        return _turns(obj["messages"], where, "role", "content"), "messages"
    if "instruction" in obj:
        prompt = _text(obj["instruction"])
        return (Row(prompt, _text(obj.get("response"))) if prompt else None), "instruction"
    if "prompt" in obj:
        prompt = _text(obj["prompt"])
        return (Row(prompt, _text(obj.get("completion", obj.get("response")))) if prompt else None), "prompt"
    raise WorkloadError(
        f"{where} has none of the keys conversations (ShareGPT), messages, instruction or prompt; "
        f"it has {', '.join(sorted(obj)) or 'none'}"
    )


def load_rows(dataset: str | Path | None = None) -> tuple[list[Row], str]:
    """Rows of ``dataset`` (or the FAQ questions) and the format found."""
    from loraship.training.data import FAQ_CSV, DataError, read_qa_csv

    path = Path(dataset) if dataset else FAQ_CSV
    if not path.is_file():
        raise WorkloadError(f"--dataset {path} does not exist")
    rows, formats = [], set()
    if path.suffix.lower() == ".csv":
        try:
            rows = [Row(r["instruction"], r["response"] or None) for r in read_qa_csv(path) if r["instruction"].strip()]
        except DataError as exc:
            raise WorkloadError(str(exc)) from None
        formats.add("faq-csv")
    else:
        text = path.read_text(encoding="utf-8-sig")
        try:
            whole = json.loads(text) if text.lstrip().startswith("[") else None
        except ValueError:
            whole = None
        if isinstance(whole, list):  # a JSON array, as ShareGPT's own files are
            records = [(f"{path}: item {i + 1}", obj) for i, obj in enumerate(whole)]
        else:
            records = []
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        records.append((f"{path}: line {n}", json.loads(line)))
                    except ValueError as exc:
                        raise WorkloadError(f"{path}: line {n} is not JSON: {exc}") from None
        for where, obj in records:
            row, kind = _row(obj, where)
            formats.add(kind)
            if row is not None:
                rows.append(row)
    if not rows:
        raise WorkloadError(f"{path} holds no prompt")
    return rows, "+".join(sorted(formats))


def load_prompts(dataset: str | Path | None = None) -> list[str]:
    """The prompts of ``dataset`` (or the FAQ questions)."""
    return [r.prompt for r in load_rows(dataset)[0]]


def mix_weights(adapters: list[str], mix: str) -> list[float]:
    """Share of requests per adapter: equal, or Zipf-like (1, 1/2, 1/3, ...) for ``skewed``."""
    if mix == "skewed":
        raw = [1 / (k + 1) for k in range(len(adapters))]
    else:
        raw = [1.0] * len(adapters)
    total = sum(raw)
    return [w / total for w in raw]


def _normal(rng: random.Random, mean: float, stddev: float) -> int:
    """A normal draw rounded to a whole number of tokens, at least 1."""
    return max(1, round(rng.gauss(mean, stddev))) if stddev > 0 else max(1, round(mean))


class Workload:
    """A reproducible sequence of requests (``Item``) for one phase or level.

    Prompts are shuffled once by ``seed`` and then cycled, so N requests over P prompts use each
    prompt N // P or N // P + 1 times. ``round-robin`` cycles the adapters; ``uniform`` and
    ``skewed`` draw them at random with the seed and the level's name. Each request's output length
    is drawn from ``lengths`` the same way (uniformly; always the one value when there is one), or
    around ``lengths[0]`` with ``length_stddev``, or is its reference answer's length (``lengths_from_dataset``).
    ``input_tokens`` (mean, stddev) makes synthetic prompts instead of ``rows``; ``prefixes`` shared prefixes of
    ``prefix_tokens`` tokens go before the prompts, each used once in every ``prefixes`` requests (seeded order).
    ``tokens`` (``tokens.Tokens``) counts each prompt; it is needed by the synthetic options.
    """

    def __init__(
        self,
        rows: list[Row] | list[str] | None,
        adapters: list[str],
        mix: str = "round-robin",
        seed: int = 0,
        lengths: list[int] | None = None,
        *,
        length_stddev: float = 0.0,
        lengths_from_dataset: bool = False,
        input_tokens: tuple[float, float] | None = None,
        prefixes: int = 0,
        prefix_tokens: int = 0,
        tokens=None,
    ):
        if mix not in MIXES:
            raise WorkloadError(f"unknown --mix {mix!r}; known: {', '.join(MIXES)}")
        rows = [r if isinstance(r, Row) else Row(r) for r in rows or []]
        if (not rows and input_tokens is None) or not adapters:
            raise WorkloadError("a workload needs at least one prompt and one adapter")
        if tokens is None and (input_tokens or prefixes or lengths_from_dataset):
            raise WorkloadError("synthetic prompts, prefixes and lengths from the data set need a tokenizer")
        self.tokens = tokens
        self.lengths = list(lengths or [64])
        self.length_stddev = length_stddev
        self.lengths_from_dataset = lengths_from_dataset
        self.input_tokens = input_tokens
        self.seed = seed
        if lengths_from_dataset:
            rows = [r for r in rows if r.reference]
            if not rows:
                raise WorkloadError("--output-lengths-from-dataset: the data set has no reference answers")
            self.reference_tokens = {r: max(1, tokens.count(r.reference)) for r in rows}
        self.rows = list(rows)
        random.Random(seed).shuffle(self.rows)
        self.adapters, self.mix = list(adapters), mix
        self.weights = mix_weights(self.adapters, mix)
        rng = random.Random(f"{seed}:prefixes")
        self.prefixes = [tokens.text(prefix_tokens, rng)[0] for _ in range(prefixes)] if prefixes else []

    def items(self, salt: str = ""):
        """An endless iterator of ``Item``; the same ``salt`` gives the same sequence."""
        rng = random.Random(f"{self.seed}:{salt}")
        lengths = random.Random(f"{self.seed}:{salt}:lengths")  # apart, so adding lengths keeps the adapters
        inputs = random.Random(f"{self.seed}:{salt}:inputs")
        order = random.Random(f"{self.seed}:{salt}:prefix")
        block: list[int] = []
        i = 0
        while True:
            if self.mix == "round-robin":
                adapter = self.adapters[i % len(self.adapters)]
            else:
                adapter = rng.choices(self.adapters, weights=self.weights)[0]
            if self.input_tokens is not None:
                prompt, _ = self.tokens.text(_normal(inputs, *self.input_tokens), inputs)
                row = None
            else:
                row = self.rows[i % len(self.rows)]
                prompt = row.prompt
            if self.lengths_from_dataset:
                new_tokens = self.reference_tokens[row]
            elif self.length_stddev > 0:
                new_tokens = _normal(lengths, self.lengths[0], self.length_stddev)
            else:
                new_tokens = lengths.choice(self.lengths)
            prefix = None
            if self.prefixes:
                if not block:
                    block = list(range(len(self.prefixes)))
                    order.shuffle(block)
                prefix = block.pop()
                glue = "" if self.input_tokens is not None else "\n"
                prompt = self.prefixes[prefix] + glue + prompt
            counted = self.tokens.count(prompt) if self.tokens is not None else None
            yield Item(prompt, adapter, new_tokens, counted, prefix)
            i += 1

    def describe(self) -> dict:
        """The workload's parameters, for bench.json."""
        if self.lengths_from_dataset:
            output = {"kind": "dataset"}
        elif self.length_stddev > 0:
            output = {"kind": "normal", "mean": self.lengths[0], "stddev": self.length_stddev, "min": 1}
        elif len(self.lengths) == 1:
            output = {"kind": "fixed", "value": self.lengths[0]}
        else:
            output = {"kind": "choice", "values": self.lengths}
        return {
            "prompts": "synthetic" if self.input_tokens is not None else len(self.rows),
            "input_tokens": (
                {"kind": "normal", "mean": self.input_tokens[0], "stddev": self.input_tokens[1], "min": 1}
                if self.input_tokens is not None
                else None
            ),
            "prefixes": len(self.prefixes),
            "prefix_tokens": self.tokens.count(self.prefixes[0]) if self.prefixes else 0,
            "output_tokens": output,
            "adapters": self.adapters,
            "mix": self.mix,
            "weights": self.weights,
            "tokenizer": (
                {"spec": self.tokens.spec, "path": str(self.tokens.path), "class": self.tokens.name}
                if self.tokens is not None
                else None
            ),
        }


def faq_corpus() -> list[str]:
    """The FAQ's questions and answers: the words synthetic prompts are made of."""
    rows, _ = load_rows(None)
    return [r.prompt for r in rows] + [r.reference for r in rows if r.reference]
