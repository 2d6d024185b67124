"""loraship's DJL Serving handler: pipelines, request parsing, generation and adapters.

This package is copied into every model directory next to ``model.py`` so the worker that DJL
starts imports exactly the code that was tested. It depends on torch, transformers and peft only
(never on the ``loraship`` CLI package).
"""

__version__ = "0.1.0"
