"""Token counts with the served model's tokenizer, and synthetic text of an exact number of tokens.

Synthetic prompts are words drawn (seeded) from a corpus (the SageMaker FAQ text) that the tokenizer holds as
one token each, with its leading space (`` the``, ``▁model``), and that encode back to themselves (the
vocabulary's own such tokens when the corpus gives too few). A run of such words
re-encodes to as many tokens as it has words, so a prompt of N tokens is N words; each one is checked by
encoding it again, and the count recorded is the one the tokenizer gives, never the target.
Counts leave out special tokens (BOS): they are the prompt's own tokens, before any chat template.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from loraship.core.errors import LorashipError

DEFAULT = "default"
_WORD = re.compile(r"^ [a-z]{2,12}$")
MIN_WORDS = 50


class TokenizerError(LorashipError):
    pass


class Tokens:
    """A Hugging Face tokenizer: counting, and words to build text of a given length from."""

    def __init__(self, spec: str, corpus: list[str] = ()):
        """``corpus``: texts whose words make synthetic prompts (the FAQ's, from ``workload``)."""
        from transformers import AutoTokenizer

        from loraship.core.models import resolve_model

        self.spec = spec
        try:
            path = resolve_model(spec) if spec == DEFAULT else str(Path(spec).expanduser())
            if spec != DEFAULT and not Path(path).is_dir():
                raise TokenizerError(
                    f"--tokenizer {spec}: not a folder (give a model folder with a tokenizer, or default)"
                )
            self.tok = AutoTokenizer.from_pretrained(path)
        except TokenizerError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, ...
            raise TokenizerError(f"--tokenizer {spec}: cannot load a tokenizer: {exc}".splitlines()[0]) from None
        self.path = path
        self.name = type(self.tok).__name__
        self.words = self._words(corpus)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def _single(self, text: str) -> int | None:
        ids = self.tok.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 and self.tok.decode(ids) == text else None

    def _words(self, corpus) -> list[int]:
        found = {w.lower() for text in corpus for w in re.findall(r"[A-Za-z]+", text)}
        words = sorted({i for w in found if _WORD.match(" " + w) and (i := self._single(" " + w)) is not None})
        if len(words) < MIN_WORDS:  # a vocabulary with few FAQ words: its own whole-word tokens
            found = set(words)
            for token_id, piece in enumerate(self.tok.convert_ids_to_tokens(list(range(len(self.tok))))):
                if piece and piece[:1] in ("Ġ", "▁") and (text := self.tok.decode([token_id])) and _WORD.match(text):
                    if self._single(text) == token_id:
                        found.add(token_id)
            words = sorted(found)
        if len(words) < MIN_WORDS:
            raise TokenizerError(
                f"--tokenizer {self.spec}: only {len(words)} whole-word tokens in its vocabulary; synthetic "
                f"prompts need {MIN_WORDS}"
            )
        return words

    def text(self, n: int, rng: random.Random) -> tuple[str, int]:
        """Text of ``n`` tokens (its words drawn with ``rng``) and the count the tokenizer gives it."""
        ids = [rng.choice(self.words) for _ in range(n)]
        text = self.tok.decode(ids)
        for _ in range(4):  # a merge across two words (rare) changes the count: add or drop a word
            got = self.count(text)
            if got == n:
                break
            ids = ids[:-1] if got > n else ids + [rng.choice(self.words)]
            text = self.tok.decode(ids)
        return text, self.count(text)
