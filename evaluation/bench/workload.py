"""What is sent: prompts from a data set or the built-in FAQ questions, and which adapter each goes to."""

from __future__ import annotations

import random
from pathlib import Path

from loraship.core.errors import LorashipError

BASE = "__base__"
MIXES = ("round-robin", "uniform", "skewed")


class WorkloadError(LorashipError):
    pass


def load_prompts(dataset: str | Path | None = None) -> list[str]:
    """Instructions from a JSONL (instruction/response) or FAQ-layout CSV file; default: the FAQ questions."""
    from loraship.training.data import FAQ_CSV, DataError, read_jsonl, read_qa_csv

    path = Path(dataset) if dataset else FAQ_CSV
    if not path.is_file():
        raise WorkloadError(f"--dataset {path} does not exist")
    try:
        rows = read_jsonl(path) if path.suffix.lower() in (".jsonl", ".json") else read_qa_csv(path)
    except DataError as exc:
        raise WorkloadError(str(exc)) from None
    prompts = [r["instruction"] for r in rows if r["instruction"].strip()]
    if not prompts:
        raise WorkloadError(f"{path} holds no non-empty instruction")
    return prompts


def mix_weights(adapters: list[str], mix: str) -> list[float]:
    """Share of requests per adapter: equal, or Zipf-like (1, 1/2, 1/3, ...) for ``skewed``."""
    if mix == "skewed":
        raw = [1 / (k + 1) for k in range(len(adapters))]
    else:
        raw = [1.0] * len(adapters)
    total = sum(raw)
    return [w / total for w in raw]


class Workload:
    """A reproducible sequence of (prompt, adapter, max_new_tokens) for one phase or level.

    Prompts are shuffled once by ``seed`` and then cycled, so N requests over P prompts use each
    prompt N // P or N // P + 1 times. ``round-robin`` cycles the adapters; ``uniform`` and
    ``skewed`` draw them at random with the seed and the level's name. Each request's output length
    is drawn from ``lengths`` the same way (uniformly; always the one value when there is one).
    """

    def __init__(
        self,
        prompts: list[str],
        adapters: list[str],
        mix: str = "round-robin",
        seed: int = 0,
        lengths: list[int] | None = None,
    ):
        if mix not in MIXES:
            raise WorkloadError(f"unknown --mix {mix!r}; known: {', '.join(MIXES)}")
        if not prompts or not adapters:
            raise WorkloadError("a workload needs at least one prompt and one adapter")
        self.prompts = list(prompts)
        random.Random(seed).shuffle(self.prompts)
        self.adapters, self.mix, self.seed = list(adapters), mix, seed
        self.weights = mix_weights(self.adapters, mix)
        self.lengths = list(lengths or [64])

    def items(self, salt: str = ""):
        """An endless iterator of (prompt, adapter, max_new_tokens); the same ``salt`` gives the same sequence."""
        rng = random.Random(f"{self.seed}:{salt}")
        lengths = random.Random(f"{self.seed}:{salt}:lengths")  # apart, so adding lengths keeps the adapters
        i = 0
        while True:
            prompt = self.prompts[i % len(self.prompts)]
            if self.mix == "round-robin":
                adapter = self.adapters[i % len(self.adapters)]
            else:
                adapter = rng.choices(self.adapters, weights=self.weights)[0]
            yield prompt, adapter, lengths.choice(self.lengths)
            i += 1
