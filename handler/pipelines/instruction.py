"""The Dolly instruction template: the single source of the prompt format.

Training, serving and evaluation all import ``format_prompt`` / ``format_training_example`` from
here; a second copy of the template anywhere else would be train/serve skew.
"""

from __future__ import annotations

from .base import Pipeline, cut_at_stop
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

    def encode_response(self, text: str) -> str:
        return extract_response(text)[0]
