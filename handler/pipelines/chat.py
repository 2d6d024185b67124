"""Chat: the tokenizer's own chat template, over an OpenAI chat request's ``messages`` (or an ``inputs``
string, which is one user message)."""

from __future__ import annotations

from ..errors import BadRequest, ConfigError
from .base import Pipeline
from .registry import register_pipeline


@register_pipeline("chat")
class ChatPipeline(Pipeline):
    """``{"messages": [{"role": "user", "content": "..."}], ...}`` (OpenAI's chat completions), or LMI's
    ``{"inputs": "..."}`` as a single user message."""

    def setup(self, tokenizer, properties):
        super().setup(tokenizer, properties)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("option.pipeline=chat needs a tokenizer with a chat template; this one has none")
        self.stop_sequences = tuple(s for s in (tokenizer.eos_token,) if s)

    def decode_request(self, item):
        return self.chat_prompt([{"role": "user", "content": super().decode_request(item)}])

    def chat_prompt(self, messages, *, add_generation_prompt=True, continue_final_message=False):
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
            )
        except ValueError as exc:  # transformers: a final message that cannot be continued, say
            raise BadRequest(f"the chat template refused the messages: {_one_line(exc)}", field="messages") from None
        except Exception as exc:  # jinja's TemplateError: the template's own raise_exception (roles, order)
            if type(exc).__module__.startswith("jinja2"):
                raise BadRequest(
                    f"the chat template refused the messages: {_one_line(exc)}", field="messages"
                ) from None
            raise

    def encode_response(self, text: str) -> str:
        return text.strip()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
