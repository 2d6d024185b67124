"""Pipelines: how a request item becomes a prompt and generated text becomes a response."""

from .base import Pipeline, cut_at_stop
from .registry import get_pipeline, known_pipelines, register_pipeline
# Importing the built-ins registers them.
from .instruction import InstructionTextGenerationPipeline
from .text import TextGenerationPipeline
from .chat import ChatPipeline

__all__ = ["Pipeline", "cut_at_stop", "get_pipeline", "known_pipelines", "register_pipeline",
           "InstructionTextGenerationPipeline", "TextGenerationPipeline", "ChatPipeline"]
