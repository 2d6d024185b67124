"""A streamed reply in LMI's format: a line per token, and a last line that also carries the answer.

The scheduler reports each row's tokens once their text is settled (``scheduler.py``); both batching
modes turn those reports into lines here::

    {"token": {"id": 13, "text": " Amazon", "log_prob": -0.61}}
    {"token": {"id": 2, "text": "", "log_prob": -0.02, "special_token": true}, "generated_text": "...",
     "details": {...}}

``details`` (when asked for) carries no ``tokens``: the lines had them. An error while generating ends the
stream with the handler's error body as the last line: the status went out with the first line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .batching import Sequence, result_of
from .errors import error_json
from .lmi import details, line, token_json
from .requests import ParsedRequest
from .results import Token


class StreamWriter:
    """The lines of one streamed request (``item``: its input as the client sent it)."""

    def __init__(
        self,
        req: ParsedRequest,
        item,
        encode_response: Callable[[str], str],
        tokenizer,
        *,
        tgi: bool = False,
        sse: bool = False,
    ):
        self.req, self.item, self.encode, self.tokenizer = req, item, encode_response, tokenizer
        self.tgi, self.sse = tgi, sse

    def tokens(self, seq: Sequence, pairs: list[tuple[int, str]]) -> list[bytes]:
        return [self._token_line(t) for t in self._tokens(seq, pairs)]

    def final(self, seq: Sequence, pairs: list[tuple[int, str]], failure: BaseException | None) -> list[bytes]:
        tokens = self._tokens(seq, pairs)
        if failure is not None:
            return [self._token_line(t) for t in tokens] + [line(error_json(failure)[1], self.sse)]
        if seq.eos is not None:
            tokens.append(Token(seq.eos[0], "", seq.eos[1], special=True))
        last = {"token": token_json(tokens[-1], self.tgi)} if tokens else {}
        text = self.encode(seq.text)
        if self.req.return_full_text and isinstance(self.item, str):
            text = self.item + text
        last["generated_text"] = text
        if self.req.details:
            res = result_of(seq, self.tokenizer, with_tokens=True)
            inputs = self.item if isinstance(self.item, str) else ""
            last["details"] = details(
                res, inputs, adapter=seq.adapter, batch_size=seq.batch_size, tgi=self.tgi, include_tokens=False
            )
            first = (seq.first_token_at or time.perf_counter()) - seq.started
            last["details"]["time_to_first_chunk"] = round(first, 4)
        return [self._token_line(t) for t in tokens[:-1]] + [line(last, self.sse)]

    @staticmethod
    def _tokens(seq: Sequence, pairs: list[tuple[int, str]]) -> list[Token]:
        return [Token(seq.tokens[i], text, seq.logprobs[i]) for i, text in pairs]

    def _token_line(self, tok: Token) -> bytes:
        return line({"token": token_json(tok, self.tgi)}, self.sse)
