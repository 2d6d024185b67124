"""The Dolly instruction template: the single source of the prompt format.

Training, serving and evaluation all import ``format_prompt`` / ``format_training_example`` from
here; a second copy of the template anywhere else would be train/serve skew.
"""

from __future__ import annotations

from .base import Pipeline, cut_at_stop, split_final
from .registry import register_pipeline

INTRO_BLURB = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_KEY = "### Instruction:"
INPUT_KEY = "Input:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"


def format_prompt(instruction: str, context: str | None = None) -> str:
    """The prompt up to and including the response marker: what the model continues from."""
    blocks = [INTRO_BLURB, f"{INSTRUCTION_KEY}\n{instruction.strip()}"]
    if context and context.strip():
        blocks.append(f"{INPUT_KEY}\n{context.strip()}")
    blocks.append(f"{RESPONSE_KEY}\n")
    return "\n\n".join(blocks)


def format_response(response: str) -> str:
    """The supervised completion: the response followed by the end marker."""
    return response.strip() + "\n\n" + END_KEY


def extract_response(generated: str) -> tuple[str, bool]:
    """The response text from a continuation of ``format_prompt``; True when ``### End`` was seen.

    Also cuts at a new ``### Instruction:``, which small models sometimes start instead of ending.
    """
    text, stopped = cut_at_stop(generated, (END_KEY, INSTRUCTION_KEY))
    return text.strip(), stopped


@register_pipeline("instruction")
class InstructionTextGenerationPipeline(Pipeline):
    """Dolly-style instruction following: ``inputs`` are instructions, answers are plain text."""

    stop_sequences = (END_KEY, INSTRUCTION_KEY)

    def decode_request(self, item):
        instruction = super().decode_request(item)
        return format_prompt(instruction)

    def chat_prompt(self, messages, *, add_generation_prompt=True, continue_final_message=False):
        """The last user message is the instruction; system messages, joined by a blank line, are the
        template's context (``Input:``), as the evaluation tasks send one. Earlier turns are not part of
        the single-turn template. The template always ends with its response marker, so
        ``add_generation_prompt`` changes nothing."""
        head, tail = split_final(messages, continue_final_message)
        context = "\n\n".join(m["content"] for m in head if m["role"] == "system" and m["content"].strip())
        instruction = self.last_user(head, continue_final_message)
        prompt = format_prompt(instruction, context) if context else self.decode_request(instruction)
        return prompt + tail

    def encode_response(self, text: str) -> str:
        return extract_response(text)[0]
