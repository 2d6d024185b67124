"""What generation hands back, in both batching modes: the answer, why it ended, and (when asked for) its
tokens with their log-probabilities, as LMI reports them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Token:
    """One token as LMI reports it: id, text and log-probability under the model's distribution."""

    id: int
    text: str
    log_prob: float | None
    special: bool = False
    rank: int | None = None
    """Its rank among the vocabulary at its position, 1 for the most likely (prompt tokens only)."""


@dataclass
class GenerationResult:
    text: str
    generated_tokens: int
    """Tokens generated, the end-of-sequence token included (as LMI counts them)."""
    finish_reason: str  # eos | stop | length | time (cut by max_time before its length)
    prompt_tokens: int
    seconds: float
    tokens: list[Token] | None = None
    """The generated tokens (the end-of-sequence token last, when it ended the answer); None when not asked for."""
    top_tokens: list[list[Token]] | None = None
    prefill: list[Token] | None = None
    prompt_top: list[list[Token]] | None = None
    """Per prompt position, its ``prompt_top_n`` most likely tokens (with ``prefill``)."""


def next_piece(full: str, settled: int) -> str:
    """The newest token's text, given the decoded text with it (``full``) and the characters the earlier
    tokens' texts hold (``settled``): ``""`` while it ends inside a character (a byte-fallback piece); the
    token that completes the character carries it."""
    return "" if full.endswith("\ufffd") else full[settled:]


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token's text (:func:`next_piece`), so that together they are the decoded text."""
    pieces: list[str] = []
    for i in range(len(ids)):
        pieces.append(next_piece(tokenizer.decode(ids[: i + 1], skip_special_tokens=False), sum(map(len, pieces))))
    return pieces


def tokens_of(ids: list[int], pieces: list[str], logprobs: list[float], cut: int, eos_ids) -> list[Token]:
    """LMI's token list: ``pieces`` are the texts of the tokens before an end-of-sequence token (``ids``
    may have one more: it is special, with no text); ``cut`` characters at the end were a stop string's."""
    texts = list(pieces)
    if cut < 0 and texts:  # an unfinished character at the very end: its replacement character is the text
        texts[-1], cut = texts[-1] + "\ufffd" * -cut, 0
    for i in reversed(range(len(texts))):  # the stop string's characters are not part of the answer
        if cut <= 0:
            break
        take = min(cut, len(texts[i]))
        texts[i], cut = texts[i][: len(texts[i]) - take], cut - take
    texts += [""] * (len(ids) - len(texts))
    return [
        Token(i, t, lp, special=i in eos_ids and k == len(pieces))
        for k, (i, t, lp) in enumerate(zip(ids, texts, logprobs))
    ]
