"""The pipeline contract: what a served task needs beyond ``model.generate``.

Modelled on LitServe's LitAPI: a pipeline turns one decoded request item into a prompt and turns
generated text back into a response. Generation itself (batching, adapters, stopping) is shared
and lives in :mod:`handler.generation`.
"""

from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar

from ..errors import BadRequest


class Pipeline(ABC):  # noqa: B024 - every hook has a default (pass-through), as in LitServe's LitAPI
    """Base class of every pipeline; the registry serves nothing else. Subclasses set ``name`` and
    override what they need.

    ``setup`` runs once per worker with the tokenizer; ``decode_request`` turns one request item
    (a value of ``inputs``) into a prompt string; ``chat_prompt`` turns an OpenAI chat request's
    ``messages`` into one; ``encode_response`` turns the generated text into the value returned to
    the client.
    """

    name: ClassVar[str] = ""
    #: Strings that end a response, on top of the tokenizer's EOS and the request's ``stop``.
    stop_sequences: ClassVar[tuple[str, ...]] = ()
    #: The request field that carries the items.
    input_field: ClassVar[str] = "inputs"

    def setup(self, tokenizer: Any, properties: dict[str, str]) -> None:
        self.tokenizer = tokenizer

    def decode_request(self, item: Any) -> str:
        if not isinstance(item, str):
            raise BadRequest(
                f"'{self.input_field}' items must be strings, got {type(item).__name__}", field=self.input_field
            )
        return item

    def chat_prompt(
        self, messages: list[dict], *, add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> str:
        """The prompt of a chat request (``messages``: ``{"role", "content"}`` with string content, already
        checked). By default the last user message goes through :meth:`decode_request`, as an ``inputs``
        item would; ``continue_final_message``: the last message is the assistant's start, appended to that
        prompt for the model to continue."""
        head, tail = split_final(messages, continue_final_message)
        return self.decode_request(self.last_user(head, continue_final_message)) + tail

    def last_user(self, messages: list[dict], continuing: bool = False) -> str:
        """The content of the last user message; BadRequest when there is none."""
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise BadRequest(
                f"the {self.name or 'custom'} pipeline's template takes a user message: 'messages' has none"
                + (" before the final assistant message" if continuing else ""),
                field="messages",
            )
        return users[-1]

    def encode_response(self, text: str) -> str:
        return text


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; return (text, whether a stop was found)."""
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if 0 <= i < cut:
                cut = i
    return text[:cut], cut < len(text)


def stop_hold(stops: tuple[str, ...] | list[str]) -> int:
    """Characters a stream holds back: the end of its text could still be the start of a stop string."""
    return max((len(s) for s in stops), default=1) - 1


def split_final(messages: list[dict], continue_final_message: bool) -> tuple[list[dict], str]:
    """(the messages before the one being continued, its content), or (all of them, "")."""
    if continue_final_message:
        return messages[:-1], messages[-1]["content"]
    return messages, ""
