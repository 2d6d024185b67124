"""The commands that measure and judge: eval, gate, bench."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

from pydantic import field_validator

from ..core.adapters import key_values
from ..evaluation.bench.run import BenchConfig
from ..evaluation.score import EvalConfig
from ..handler.settings import Flag, Settings
from ..peer import PeerOptions
from .flags import Command, as_command_line


def evaluate(cfg: EvalConfig) -> int:
    """Score the base model and adapters on the same documents with lm-eval; write eval.json and samples/."""
    from ..evaluation.score import run_eval

    result = run_eval(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    for metric, entry in result["metrics"].items():
        for name, s in entry["adapters"].items():
            ci = ", ".join("n/a" if v is None else f"{v:+.4f}" for v in s["ci"])
            base = "n/a" if entry["base"] is None else f"{entry['base']:.4f}"
            value = "n/a" if s["value"] is None else f"{s['value']:.4f}"
            print(
                f"{metric:16s} {name}: {base} -> {value}  delta CI [{ci}]  "
                f"better/worse/same {s['better']}/{s['worse']}/{s['same']} of {s['n']}"
            )
    print(f"loraship eval: wrote {cfg.out / 'eval.json'} and samples/")
    return 0


class GateOptions(Settings):
    eval: Path
    """eval.json written by `loraship eval`"""
    policy: Path | None = None
    """policy YAML (default: evaluation/policies/default.yaml)"""
    bench: Path | None = None
    """bench.json of a `loraship bench` run, for the policy's performance budgets"""
    adapter_dirs: Annotated[dict[str, str], Flag(name="--adapter", repeat=True, metavar="NAME=DIR")] = {}
    """where an adapter's files are now, if not at the path eval.json recorded (repeatable)"""
    out: Path
    """folder for gate.json, gate.md and junit.xml"""

    @field_validator("adapter_dirs", mode="before")
    @classmethod
    def _pairs(cls, value):
        return key_values(value) if isinstance(value, list) else value


def gate(opts: GateOptions) -> int:
    """Pass or fail adapters: eval scores (and bench budgets) against a policy; exit 0 pass, 1 fail, 2 bad input."""
    from ..evaluation.gate import DEFAULT_POLICY, run_gate

    result = run_gate(
        opts.eval, opts.policy or DEFAULT_POLICY, opts.out, bench_path=opts.bench, adapter_dirs=opts.adapter_dirs
    )
    for c in result.checks:
        if c.status != "pass":
            print(f"  {c.status.upper():4s} {c.adapter} {c.metric or '-'} {c.check}: {c.reason}")
    for name, info in result.adapters.items():
        print(f"loraship gate: {name}: {info['verdict'].upper()}")
    print(f"loraship gate: {result.verdict.upper()} (wrote {opts.out / 'gate.json'}, gate.md, junit.xml)")
    return result.exit_code


def bench(cfg: BenchConfig) -> int:
    """Load-test a served endpoint: latency, throughput and goodput per level and per adapter, with plots.
    Writes bench.json, requests.jsonl, summary.md and PNG plots into --out; `loraship bench compare A B`
    prints B/A ratios of two runs."""
    from ..evaluation.bench.run import exit_code, run_bench

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # like Ctrl-C: stop, keep what was measured, write it
    try:
        cfg.command = as_command_line(["loraship", "bench"], BenchConfig, cfg)
        result = run_bench(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"loraship bench: wrote {cfg.out}/bench.json, summary.md, requests.jsonl, "
        f"{', '.join(result['files']['plots']) or 'no plots'}"
    )
    return exit_code(result)


class CompareOptions(Settings):
    a: Annotated[str, Flag(positional=True)]
    """run A: bench.json or its folder (the baseline)"""
    b: Annotated[str, Flag(positional=True)]
    """run B: bench.json or its folder"""
    a_level: str | None = None
    """compare only this level of A, e.g. 1 or concurrency=1"""
    b_level: str | None = None
    """... against this level of B (default: the same as --a-level)"""


def compare(opts: CompareOptions) -> int:
    """Side-by-side B/A ratios of two runs' bench.json (or their folders)."""
    from ..evaluation.bench.compare import compare_text, load

    print(compare_text(load(opts.a), load(opts.b), opts.a_level, opts.b_level))
    return 0


def peer(opts: PeerOptions) -> int:
    """The handler and llama.cpp's Python server (pip install 'loraship[peers]') on the default model and one
    streamed workload, one server after the other, and with --adapter each also with a LoRA adapter; writes the
    runs and compare.txt into --out and prints it."""
    from ..peer import run_peer

    print(run_peer(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    return 0


COMMANDS = [
    Command("eval", evaluate, EvalConfig),
    Command("gate", gate, GateOptions),
    # `bench compare A B` needs neither --url nor --out: the model reports them when missing.
    Command(
        "bench",
        bench,
        BenchConfig,
        require=False,
        subcommands=(Command("compare", compare, CompareOptions), Command("peer", peer, PeerOptions)),
    ),
]
