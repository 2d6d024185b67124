"""Chat: the tokenizer's own chat template over ``"messages"``."""

from __future__ import annotations

from ..errors import BadRequest, ConfigError
from .base import Pipeline
from .registry import register_pipeline

ROLES = ("system", "user", "assistant")


@register_pipeline("chat")
class ChatPipeline(Pipeline):
    """``{"messages": [{"role": "user", "content": "..."}], "parameters": {...}}``."""

    input_field = "messages"

    def setup(self, tokenizer, properties):
        super().setup(tokenizer, properties)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("option.pipeline=chat needs a tokenizer with a chat template; this one has none")
        self.stop_sequences = tuple(s for s in (tokenizer.eos_token,) if s)

    def decode_request(self, item):
        if not isinstance(item, list) or not item:
            raise BadRequest("'messages' must be a non-empty list of {role, content} objects", field="messages")
        for i, m in enumerate(item):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadRequest(
                    f"messages[{i}] must be an object with role in {ROLES} and string content", field=f"messages[{i}]"
                )
        return self.tokenizer.apply_chat_template(item, tokenize=False, add_generation_prompt=True)

    def encode_response(self, text: str) -> str:
        return text.strip()
