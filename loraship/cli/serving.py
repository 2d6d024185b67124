"""The serving commands: models, build, serve, perf, demo."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from ..build import BuildOptions
from ..demo import DemoOptions
from ..handler.settings import Flag, Settings
from ..runtime import ServerChoice
from .flags import Command


class PrepareOptions(Settings):
    force: bool = False
    """convert again even if the folder exists"""


def prepare(opts: PrepareOptions) -> int:
    """Convert the embedded default model (SmolLM2-135M-Instruct GGUF) to an HF folder; print its path."""
    from ..core.models import prepare_default

    print(prepare_default(force=opts.force))
    return 0


def models(args) -> int:
    """Manage the embedded default model."""
    from ..core.errors import UsageError

    raise UsageError("give an action: loraship models prepare")


class RuntimeOptions(Settings):
    force: bool = False
    """fetch and compile again even if the runtime is there"""


def runtime(args) -> int:
    """The DJL runtime of `--server host`: DJL's Python engine and loraship's host."""
    from ..core.errors import UsageError

    raise UsageError("give an action: loraship runtime prepare")


def prepare_runtime(opts: RuntimeOptions) -> int:
    """Fetch DJL's Python engine (Maven Central) and compile the host into the runtime folder
    ($LORASHIP_RUNTIME, a checkout's lib/, else ~/.cache/loraship/runtime); print its path."""
    from ..runtime import prepare_runtime as prepare

    print(prepare(force=opts.force))
    return 0


def build(opts: BuildOptions) -> int:
    """Write a DJL Serving model dir: serving.properties, model.py, the handler, adapters."""
    from ..build import build_model_dir

    print(build_model_dir(**opts.model_dump()))
    return 0


class ServeOptions(ServerChoice):
    model_dir: Annotated[Path, Flag(positional=True)]
    """a model dir written by `loraship build`"""
    port: int = 8080
    """port to listen on"""
    host: str = "127.0.0.1"
    """address to bind (default loopback only)"""
    timeout: float = 300
    """seconds to wait for the model to load"""
    prometheus: bool = False
    """serve /server/metrics in Prometheus format, the handler's metrics included (sets SERVING_PROMETHEUS=true,
    which both servers read; also honoured from the environment)"""


def serve(opts: ServeOptions) -> int:
    """Run DJL Serving on a model dir until it stops or Ctrl-C; print the URL once /ping answers."""
    from ..runtime import Server

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # Also when started in the background, where SIGINT arrives ignored; SIGTERM stops it the same way.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    env = {"SERVING_PROMETHEUS": "true"} if opts.prometheus else None
    server = Server(opts.model_dir, host=opts.host, port=opts.port, env=env, **opts.runtime())
    try:
        took = server.wait_ready(timeout=opts.timeout)
        print(
            f"loraship: {server.name} serving {opts.model_dir} as model {server.model_name} at {server.url} "
            f"(ready in {took:.1f}s)",
            flush=True,
        )
        return server.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


class PerfOptions(ServerChoice):
    model: str = "default"
    """'default', a local HF folder, or a hub id"""
    tokens: int = 64
    """new tokens per request (fixed with min_new_tokens)"""
    concurrency: int = 8
    """concurrent requests and batch_size"""
    out: str | None = None
    """also write the figures as JSON here"""
    continuous: bool = False
    """instead: only continuous batching's in-process figures (mixed-adapter step cost, memory over 200
    requests)"""
    decode: bool = False
    """instead: batch-1 decode steps in-process: eager vs compiled (option.decode; the compiled step also on
    ATen's products instead of the row kernel), the machine's read-bandwidth ceiling and each path's fraction of
    it, an adapter's cost at batch 1, and llama.cpp on the same fp32 weights when the peer is installed (pip
    install 'loraship[peers]')"""
    rounds: Annotated[int, Field(ge=1)] = 3
    """with --decode: rounds, each taking every prompt on each path in turn (figures are their medians)"""
    thread_sweep: Annotated[list[str], Flag(csv=True, metavar="POLICY,...")] = []
    """instead: batch-1 and batch-CONCURRENCY seconds for each worker thread policy, quiet and with one busy
    process; a policy is N (OMP_NUM_THREADS) or N/passive (OMP_WAIT_POLICY too)"""

    @field_validator("thread_sweep")
    @classmethod
    def _policies(cls, policies: list[str]) -> list[str]:
        bad = [p for p in policies if not re.fullmatch(r"[1-9]\d*(/passive)?", p)]
        if bad:
            raise ValueError(f"takes N or N/passive, comma-separated; got {bad}")
        return policies


def perf(opts: PerfOptions) -> int:
    """Measure the handler's batching gain, mixed-adapter cost, DJL overhead and fp32 vs bf16 (or, with
    --decode, batch-1 decode speed against the bandwidth ceiling and llama.cpp)."""
    from ..perf import print_continuous, print_decode, print_figures, run_continuous, run_decode, run_perf, run_threads

    if opts.continuous or opts.decode:
        if opts.decode:
            if opts.threads:
                import torch

                torch.set_num_threads(opts.threads)  # in-process: this process's threads (and llama.cpp's)
            fig = run_decode(opts.model, opts.tokens, rounds=opts.rounds)
            print_decode(fig)
        else:
            fig = run_continuous(opts.model, opts.tokens, opts.concurrency)
            print_continuous(fig)
        if opts.out:
            Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
            Path(opts.out).write_text(json.dumps(fig, indent=2))
        return 0
    common = dict(tokens=opts.tokens, concurrency=opts.concurrency, out=opts.out, server=opts.runtime())
    if opts.thread_sweep:
        run_threads(opts.model, policies=opts.thread_sweep, **common)
    else:
        print_figures(run_perf(opts.model, **common))
    return 0


def demo(opts: DemoOptions) -> int:
    """Run the whole workflow on the embedded default model and print what each step proved."""
    from ..demo import run_demo

    return run_demo(port=opts.port, questions=opts.questions, server=opts.runtime())


COMMANDS = [
    Command("models", models, subcommands=(Command("prepare", prepare, PrepareOptions),)),
    Command("runtime", runtime, subcommands=(Command("prepare", prepare_runtime, RuntimeOptions),)),
    Command("build", build, BuildOptions),
    Command("serve", serve, ServeOptions),
]
LAST = [Command("perf", perf, PerfOptions), Command("demo", demo, DemoOptions)]
