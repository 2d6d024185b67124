"""loraship: take a LoRA adapter from training to a SageMaker endpoint, with proof at every step."""

__version__ = "0.1.0"
