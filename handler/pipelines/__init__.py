"""Pipelines: how a request item becomes a prompt and generated text becomes a response."""

from .base import Pipeline, cut_at_stop, stop_hold
from .chat import ChatPipeline

# Importing the built-ins registers them.
from .instruction import InstructionTextGenerationPipeline
from .registry import get_pipeline, known_pipelines, register_pipeline
from .text import TextGenerationPipeline

__all__ = [
    "Pipeline",
    "cut_at_stop",
    "stop_hold",
    "get_pipeline",
    "known_pipelines",
    "register_pipeline",
    "InstructionTextGenerationPipeline",
    "TextGenerationPipeline",
    "ChatPipeline",
]
