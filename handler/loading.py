"""Loading what the handler serves from its options: the pipeline, the generator and the adapters.

No DJL types here, so the static service, the async service and ``loraship perf`` load the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .adapters import AdapterSet
from .generation import Generator, load_model
from .metrics import Metrics
from .pipelines import Pipeline, get_pipeline
from .properties import ServingOptions


@dataclass
class Loaded:
    pipeline: Pipeline
    generator: Generator
    adapters: AdapterSet
    metrics: Metrics


def load(opts: ServingOptions, properties: dict | None = None) -> Loaded:
    """The model, tokenizer and pipeline ``opts`` name, the seed adapter if there is one, and the metrics
    writer they share."""
    pipeline = get_pipeline(opts.pipeline)()
    model, tokenizer, device = load_model(opts)
    pipeline.setup(tokenizer, dict(properties or {}))
    pinned = {n.strip() for n in opts.pinned_adapters.split(",") if n.strip()}
    metrics = Metrics(enabled=opts.metrics)
    adapters = AdapterSet(
        model,
        tokenizer,
        allow_pickle=opts.allow_pickle_adapters,
        roots=opts.roots,
        max_loaded=opts.max_adapters,
        pinned=pinned,
        metrics=metrics,
    )
    if opts.adapter_checkpoint:
        adapters.add(opts.adapter_name, opts.resolve(opts.adapter_checkpoint), pin=True)
    return Loaded(pipeline, Generator(model, tokenizer, device, pipeline.stop_sequences), adapters, metrics)
