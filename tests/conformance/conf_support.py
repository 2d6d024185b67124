"""The conformance suite's model dirs: a tiny GPT-NeoX with adapters alpha (seed) and beta, the
slow pipeline of the reliability suite, and the adapter root as option.adapter_roots."""

from __future__ import annotations

from pathlib import Path

from rel_support import SLOW_PIPELINE
from servers import start_server

from loraship.build import build_model_dir


def serve(kind, tiny_neox, adapters: Path, tmp_path_factory, name: str, options: dict | None = None, env=None, **build):
    md = build_model_dir(
        str(tiny_neox),
        tmp_path_factory.mktemp(f"{kind}-{name}") / name,
        {"alpha": adapters / "alpha", "beta": adapters / "beta"},
        options={"adapter_roots": str(adapters), "pipeline": "slow_pipeline:Slow", **(options or {})},
        **build,
    )
    (md / "slow_pipeline.py").write_text(SLOW_PIPELINE)
    return start_server(md, tmp_path_factory, kind=kind, env=env)
