"""Raw completion: the input string is the prompt, the continuation is the response."""

from .base import Pipeline
from .registry import register_pipeline


@register_pipeline("text")
class TextGenerationPipeline(Pipeline):
    """No template: what a base model or a benchmark sends."""
