"""``loraship perf``: the handler's performance figures, measured through DJL on this machine.

1. batching gain: 8 concurrent requests with ``batch_size=8`` vs the same requests one at a time
   with ``batch_size=1`` (output tokens/s);
2. mixed-adapter cost: a batch mixing two adapters and the base vs the same batch on one adapter;
3. server overhead: batch-1 latency through DJL vs ``model.generate`` in this process;
4. dtype: float32 vs bfloat16 in-process at batch 1 and 8 (what ``option.dtype=auto`` picks on CPU);
5. continuous batching, in-process (``--continuous`` alone): its decode loop against one static batched
   ``generate`` of the same rows, the time of a decode step whose rows mix two adapters and the base vs
   the same rows on one adapter, and the process's memory over 200 requests through the scheduler (it
   must not grow with the requests served).

Every request generates exactly ``tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``), so
the runs compare. Figures are printed and written as JSON; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

from loraship.training.data import FAQ_CSV, read_qa_csv

from .build import build_model_dir
from .core.models import resolve_model
from .runtime import Server, free_port


def _prompts(n: int) -> list[str]:
    return [r["instruction"] for r in read_qa_csv(FAQ_CSV)[:n]]


def _post(url, prompt, tokens, adapter=""):
    body = {
        "inputs": prompt,
        "adapters": adapter or "__base__",
        "parameters": {"max_new_tokens": tokens, "min_new_tokens": tokens, "details": True},
    }
    start = time.perf_counter()
    r = requests.post(url + "/invocations", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["details"]


def _concurrent(url, prompts, tokens, adapters):
    """Send all at once; return (wall seconds, output tokens, largest batch DJL formed)."""
    out = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def send(i):
        barrier.wait()
        out[i] = _post(url, prompts[i], tokens, adapters[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return wall, sum(d["generated_tokens"] for _, d in out), max(d["batch_size"] for _, d in out)


def _random_adapters(base: str, folder: Path, n: int = 2) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = {}
    for i in range(n):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base)
        targets = (
            ["query_key_value"] if model.config.model_type == "gpt_neox" else ["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False))
        path = folder / f"perf{i + 1}"
        peft.save_pretrained(path)
        adapters[path.name] = path
    return adapters


def _in_process(base: str, prompts: list[str], tokens: int, dtype: torch.dtype) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.handler.generation import Generator, prepare_tokenizer
    from loraship.handler.pipelines.instruction import format_prompt
    from loraship.handler.requests import GenerationParams

    tok = AutoTokenizer.from_pretrained(base)
    prepare_tokenizer(tok)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).eval()
    gen = Generator(model, tok, torch.device("cpu"))
    params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)
    formatted = [format_prompt(p) for p in prompts]
    gen.generate(formatted[:1], params)  # warm-up
    singles = []
    for p in formatted:
        start = time.perf_counter()
        gen.generate([p], params)
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    gen.generate(formatted, params)
    batch_wall = time.perf_counter() - start
    n = len(prompts)
    return {
        "batch1_latency_s": statistics.mean(singles),
        "batch1_tok_s": n * tokens / sum(singles),
        f"batch{n}_wall_s": batch_wall,
        f"batch{n}_tok_s": n * tokens / batch_wall,
    }


def _rss_mb() -> float:
    """Resident memory of this process (Linux /proc), MB."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_continuous(model: str = "default", tokens: int = 64, concurrency: int = 8, requests_total: int = 200) -> dict:
    """Continuous batching's own figures, in this process: mixed-adapter step cost and memory over requests."""
    import threading

    from loraship.handler.batching import Engine
    from loraship.handler.loading import load
    from loraship.handler.pipelines.instruction import format_prompt
    from loraship.handler.properties import ServingOptions
    from loraship.handler.requests import GenerationParams
    from loraship.handler.scheduler import Job, Scheduler

    base = resolve_model(model)
    prompts = [format_prompt(p) for p in _prompts(concurrency)]
    with tempfile.TemporaryDirectory(prefix="loraship-perf-") as tmp:
        adapters = _random_adapters(base, Path(tmp))
        names = list(adapters)
        # The handler's own loading, without DJL's Input/Output (djl_python lives in the engine jar).
        loaded = load(ServingOptions.from_properties({"model_id": base, "dtype": "float32", "adapter_roots": tmp}))
        served, gen = loaded.adapters, loaded.generator
        for name, path in adapters.items():
            served.add(name, str(path))
        engine = Engine(gen.tokenizer, gen.device, gen.eos_ids, gen.stop_sequences)
        ids = [gen.tokenizer(p)["input_ids"] for p in prompts]
        fixed = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)

        def step_seconds(row_adapters: list[str]) -> float:
            model_ = served.ensure_loaded(row_adapters)
            batch = engine.prefill(model_, [engine.new_sequence(i, fixed, a) for i, a in zip(ids, row_adapters)])
            start, steps = time.perf_counter(), 0
            while batch is not None:
                batch = engine.step(model_, batch)
                steps += 1
            return (time.perf_counter() - start) / steps

        one = [names[0]] * concurrency
        mixed = [(names + [""])[i % 3] for i in range(concurrency)]
        step_seconds(one)  # warm-up
        one_s, mixed_s = step_seconds(one), step_seconds(mixed)

        # The decode loop against one static batched generate of the same base rows: what the merged cache
        # and the per-step Python cost (vs transformers' own loop) take.
        base_rows = [""] * concurrency
        start = time.perf_counter()
        model_ = served.ensure_loaded(base_rows)
        batch = engine.prefill(model_, [engine.new_sequence(i, fixed) for i in ids])
        while batch is not None:
            batch = engine.step(model_, batch)
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        gen.generate(prompts, fixed, base_rows, model=model_)
        generate_s = time.perf_counter() - start

        sched = Scheduler(engine, served.ensure_loaded, max_rows=concurrency)
        done = threading.Semaphore(0)
        short = GenerationParams(max_new_tokens=8, min_new_tokens=8)
        rss = []
        try:
            for start in range(0, requests_total, 50):
                for i in range(start, min(start + 50, requests_total)):
                    seq = engine.new_sequence(ids[i % len(ids)], short, (names + [""])[i % 3])
                    sched.submit(Job(seq, lambda s, t: None, lambda s, t: done.release()))
                for _ in range(start, min(start + 50, requests_total)):
                    done.acquire()
                rss.append(round(_rss_mb(), 1))
        finally:
            sched.close()
    return {
        "engine_loop_s": loop_s,
        "static_generate_s": generate_s,
        "engine_vs_generate_speed": generate_s / loop_s,
        "step_one_adapter_s": one_s,
        "step_mixed_s": mixed_s,
        "mixed_vs_one_adapter_step": mixed_s / one_s,
        "mix": mixed,
        "rss_mb_every_50_requests": rss,
        "rss_growth_mb_after_first_50": round(rss[-1] - rss[0], 1),
    }


def print_continuous(fig: dict) -> None:
    print("continuous batching (in-process):")
    print(
        f"  decode loop vs one static generate      {fig['engine_vs_generate_speed']:6.2f}x speed "
        f"({fig['engine_loop_s']:.2f} vs {fig['static_generate_s']:.2f} s, same rows)"
    )
    print(
        f"  decode step, 2 adapters + base vs 1 adapter {fig['mixed_vs_one_adapter_step']:6.2f}x "
        f"({fig['step_mixed_s'] * 1000:.1f} vs {fig['step_one_adapter_s'] * 1000:.1f} ms; target <= 1.3x)"
    )
    print(
        f"  process memory every 50 requests (MB)   {fig['rss_mb_every_50_requests']} "
        f"(growth after the first 50: {fig['rss_growth_mb_after_first_50']} MB)"
    )


def run_perf(
    model: str = "default", tokens: int = 64, concurrency: int = 8, out: str | None = None, server: dict | None = None
) -> dict:
    base = resolve_model(model)
    prompts = _prompts(concurrency)
    fig: dict = {
        "model": model,
        "tokens_per_request": tokens,
        "concurrency": concurrency,
        "torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="loraship-perf-") as tmp:
        tmp = Path(tmp)
        adapters = _random_adapters(base, tmp / "adapters")
        names = list(adapters)

        print("in-process model.generate (float32, bfloat16) ...", flush=True)
        fig["in_process"] = {
            str(dt).removeprefix("torch."): _in_process(base, prompts, tokens, dt)
            for dt in (torch.float32, torch.bfloat16)
        }

        print("DJL batch_size=1, requests one at a time ...", flush=True)
        md1 = build_model_dir(model, tmp / "md-b1", batch_size=1, dtype="float32")
        with Server(md1, port=free_port(), log_file=open(tmp / "b1.log", "w"), **(server or {})) as srv:
            srv.wait_ready()
            _post(srv.url, prompts[0], tokens)  # warm-up
            lat = [_post(srv.url, p, tokens)[0] for p in prompts]
        fig["djl_batch1"] = {"latency_s": statistics.mean(lat), "tok_s": len(prompts) * tokens / sum(lat)}

        print(f"DJL batch_size={concurrency}, {concurrency} concurrent requests ...", flush=True)
        md8 = build_model_dir(
            model, tmp / "md-b8", adapters, batch_size=concurrency, max_batch_delay=200, dtype="float32"
        )
        with Server(md8, port=free_port(), log_file=open(tmp / "b8.log", "w"), **(server or {})) as srv:
            srv.wait_ready()
            _concurrent(srv.url, prompts, tokens, [""] * concurrency)  # warm-up
            wall, toks, biggest = _concurrent(srv.url, prompts, tokens, [""] * concurrency)
            fig["djl_batched"] = {"wall_s": wall, "tok_s": toks / wall, "largest_batch": biggest}
            one = _concurrent(srv.url, prompts, tokens, [names[0]] * concurrency)
            mixed_names = [(names + [""])[i % 3] for i in range(concurrency)]
            mixed = _concurrent(srv.url, prompts, tokens, mixed_names)
            fig["djl_one_adapter"] = {"wall_s": one[0], "largest_batch": one[2]}
            fig["djl_mixed_adapters"] = {"wall_s": mixed[0], "largest_batch": mixed[2], "mix": mixed_names}

    print("continuous batching, in-process ...", flush=True)
    fig["continuous"] = run_continuous(model, tokens, concurrency)
    direct = fig["in_process"]["float32"]
    fig["figures"] = {
        "batching_gain": fig["djl_batched"]["tok_s"] / fig["djl_batch1"]["tok_s"],
        "mixed_vs_one_adapter_time": fig["djl_mixed_adapters"]["wall_s"] / fig["djl_one_adapter"]["wall_s"],
        "djl_vs_direct_batch1_latency": fig["djl_batch1"]["latency_s"] / direct["batch1_latency_s"],
        "bf16_vs_fp32_speed_batch1": fig["in_process"]["bfloat16"]["batch1_tok_s"] / direct["batch1_tok_s"],
        f"bf16_vs_fp32_speed_batch{concurrency}": (
            fig["in_process"]["bfloat16"][f"batch{concurrency}_tok_s"] / direct[f"batch{concurrency}_tok_s"]
        ),
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(fig, indent=2))
    return fig


def print_figures(fig: dict) -> None:
    f, c = fig["figures"], fig["concurrency"]
    print(f"\n{fig['tokens_per_request']} new tokens per request, torch threads {fig['torch_threads']}")
    print(
        f"  DJL batch_size=1 sequential        {fig['djl_batch1']['tok_s']:8.1f} tok/s, "
        f"latency {fig['djl_batch1']['latency_s']:.2f}s"
    )
    print(
        f"  DJL batch_size={c} x{c} concurrent    {fig['djl_batched']['tok_s']:8.1f} tok/s "
        f"(largest batch {fig['djl_batched']['largest_batch']})"
    )
    print(f"  batching gain                      {f['batching_gain']:8.2f}x  (target >= 3.5x)")
    print(f"  mixed 2 adapters + base vs 1 adapter {f['mixed_vs_one_adapter_time']:6.2f}x time (target <= 1.3x)")
    print(f"  DJL vs in-process batch-1 latency  {f['djl_vs_direct_batch1_latency']:8.2f}x  (target <= 1.10x)")
    print(f"  bf16 vs fp32 speed, batch 1        {f['bf16_vs_fp32_speed_batch1']:8.2f}x")
    print(f"  bf16 vs fp32 speed, batch {c}        {f[f'bf16_vs_fp32_speed_batch{c}']:8.2f}x")
    print_continuous(fig["continuous"])


def _busy_core():
    """One competing process that keeps a core busy (as another job on a shared host would)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_threads(
    model: str = "default",
    tokens: int = 32,
    concurrency: int = 8,
    policies=("1", "2"),
    server: dict | None = None,
    out: str | None = None,
) -> dict:
    """Batch-1 latency and a batch of ``concurrency`` through the server for each worker thread policy, on a
    quiet machine and with one competing busy process. A policy is ``N`` (OMP_NUM_THREADS=N) or
    ``N/passive`` (also OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning)."""
    prompts = _prompts(concurrency)
    fig: dict = {"model": model, "tokens_per_request": tokens, "concurrency": concurrency, "runs": []}
    server = {k: v for k, v in (server or {}).items() if k != "threads"}
    with tempfile.TemporaryDirectory(prefix="loraship-threads-") as tmp:
        md = build_model_dir(model, Path(tmp) / "md", batch_size=concurrency, max_batch_delay=200, dtype="float32")
        for policy in policies:
            threads, _, wait = str(policy).partition("/")
            env = {"OMP_WAIT_POLICY": wait.upper() or "ACTIVE"}
            with Server(
                md,
                port=free_port(),
                log_file=open(Path(tmp) / f"t{threads}{wait}.log", "w"),
                threads=int(threads),
                env=env,
                **server,
            ) as srv:
                srv.wait_ready()
                _post(srv.url, prompts[0], tokens)  # warm-up
                for busy in (False, True):
                    competitor = _busy_core() if busy else None
                    try:
                        b1 = _post(srv.url, prompts[0], tokens)[0]
                        bn = _concurrent(srv.url, prompts, tokens, [""] * concurrency)[0]
                    finally:
                        if competitor:
                            competitor.kill()
                            competitor.wait()
                    fig["runs"].append(
                        {
                            "server": srv.kind,
                            "policy": policy,
                            "busy_competitor": busy,
                            "batch1_s": b1,
                            f"batch{concurrency}_s": bn,
                        }
                    )
                    print(
                        f"  {srv.kind} {policy:>9}  {'busy ' if busy else 'quiet'}: batch 1 {b1:6.2f}s, "
                        f"batch {concurrency} {bn:6.2f}s",
                        flush=True,
                    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(fig, indent=2))
    return fig


def read_bandwidth(gib: float = 1.0, repeats: int = 3) -> float:
    """This machine's memory read bandwidth (bytes/s): the best of ``repeats`` multi-threaded ``torch.sum``
    over a ``gib`` GiB tensor, too big for any cache."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    x.sum()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start))
    return best


def _step_rate(engine, model, ids: list[int], tokens: int, adapter: str = "") -> tuple[float, list[int]]:
    """Decode steps per second for one row alone (the prefill not counted), and its tokens."""
    from loraship.handler.requests import GenerationParams

    seq = engine.new_sequence(ids, GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens), adapter)
    batch = engine.prefill(model, [seq])
    start, steps = time.perf_counter(), 0
    while batch is not None:
        batch = engine.step(model, batch)
        steps += 1
    return steps / (time.perf_counter() - start), seq.tokens


def _llama_cpp_rate(llm, ids: list[int], tokens: int) -> float:
    """llama.cpp's decode steps per second for the same prompt, greedy (first token, the prefill's, not counted)."""
    gen = llm.generate(ids, temp=0.0, top_k=1, reset=True)
    next(gen)
    start = time.perf_counter()
    for _ in range(tokens - 1):
        next(gen)
    rate = (tokens - 1) / (time.perf_counter() - start)
    gen.close()
    return rate


def run_decode(model: str = "default", tokens: int = 64, prompts: int = 4, rounds: int = 3, peer: bool = True) -> dict:
    """Batch-1 decode in this process: eager and compiled steps (option.decode) against the machine's
    read-bandwidth ceiling, an adapter's cost at batch 1, and llama.cpp on the same fp32 weights (an F32 GGUF
    made by its own converter) when the peer is installed. Every figure is a median over ``rounds`` rounds;
    a round takes each path in turn on one prompt, then on the next, so a noisy neighbour hits them alike."""
    import importlib.util

    from loraship.handler.batching import Engine
    from loraship.handler.decode import CompiledDecoder
    from loraship.handler.loading import load
    from loraship.handler.pipelines.instruction import format_prompt
    from loraship.handler.properties import ServingOptions

    base = resolve_model(model)
    fig: dict = {"model": model, "tokens": tokens, "prompts": prompts, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="loraship-perf-") as tmp:
        # Two loads: peft wraps a model in place once an adapter loads, and the base paths need it unwrapped.
        plain = load(ServingOptions.from_properties({"model_id": base, "dtype": "float32"}))
        options = {"model_id": base, "dtype": "float32", "adapter_roots": tmp}
        with_adapter = load(ServingOptions.from_properties(options))
        name, path = next(iter(_random_adapters(base, Path(tmp), n=1).items()))
        with_adapter.adapters.add(name, str(path))
        gen = plain.generator
        tok, model_ = gen.tokenizer, gen.model
        ids = [tok(format_prompt(p))["input_ids"] for p in _prompts(prompts)]
        weight_bytes = sum(p.numel() * p.element_size() for p in model_.parameters())
        eager = Engine(tok, gen.device, gen.eos_ids)
        compiled = Engine(tok, gen.device, gen.eos_ids, decode="compiled", decode_tokens=512)
        print("compiling the one-row decode step ...", flush=True)
        decoder = compiled.prepare(model_)
        decoder.ready.wait()
        if decoder.error is not None:
            raise RuntimeError(f"the decode step did not compile: {decoder.error}")
        fig["compile_s"] = decoder.compile_seconds
        fig["row_kernel"] = decoder.row_kernel
        # the same step on ATen's (MKL's) products: what the row kernel contributes, in the same rounds
        aten = Engine(tok, gen.device, gen.eos_ids, decode="compiled", decode_tokens=512)
        aten.decoder = CompiledDecoder(model_, 512, gen.device, warm=False, rows=False)
        aten.decoder.warm_up()
        if aten.decoder.error is not None:
            raise RuntimeError(f"the decode step did not compile: {aten.decoder.error}")
        peft_model = with_adapter.adapters.ensure_loaded([name])
        gen_a = with_adapter.generator
        adapter_eager = Engine(tok, gen_a.device, gen_a.eos_ids)
        # slots on the adapter's own modules, as `loraship build` writes option.lora_target_modules
        targets = tuple(sorted(peft_model.peft_config[name].target_modules))
        fig["lora_slot"] = {"rank": 16, "modules": list(targets)}
        adapter_compiled = Engine(
            tok, gen_a.device, gen_a.eos_ids, decode="compiled", decode_tokens=512, lora_rank=16, lora_targets=targets
        )
        print("compiling the one-row decode steps beside an adapter (base and adapter slot) ...", flush=True)
        slotted = adapter_compiled.prepare(peft_model, background=False)
        if not slotted.lora_ready.is_set():
            raise RuntimeError(f"the adapter decode step did not compile: {slotted.error}")
        paths = {
            "eager": lambda i: _step_rate(eager, model_, ids[i], tokens),
            "compiled": lambda i: _step_rate(compiled, model_, ids[i], tokens),
            "compiled_aten": lambda i: _step_rate(aten, model_, ids[i], tokens),
            "adapter_row": lambda i: _step_rate(adapter_compiled, peft_model, ids[i], tokens, name),
            "adapter_row_eager": lambda i: _step_rate(adapter_eager, peft_model, ids[i], tokens, name),
            "base_row_beside_adapters": lambda i: _step_rate(adapter_compiled, peft_model, ids[i], tokens),
        }
        if peer and importlib.util.find_spec("llama_cpp") is not None:
            from llama_cpp import Llama

            from .gguf_convert import check_requirements, convert_model, converters

            check_requirements()
            gguf = convert_model(base, converters())
            fig["llama_cpp_gguf"] = str(gguf)
            llm = Llama(str(gguf), n_threads=torch.get_num_threads(), n_ctx=1024, verbose=False)
            paths["llama_cpp"] = lambda i: _llama_cpp_rate(llm, ids[i], tokens)
        for path in paths.values():
            path(0)  # warm-up
        rates: dict[str, list[float]] = {k: [] for k in paths}
        bandwidths, tokens_of = [], {}
        same = {"compiled": "eager", "compiled_aten": "eager", "adapter_row": "adapter_row_eager"}  # eager twins
        equal = dict.fromkeys(same, True)
        for r in range(rounds):
            print(f"round {r + 1} of {rounds} ...", flush=True)
            bandwidths.append(read_bandwidth())
            # every path on one prompt, then the next prompt: a busy spell on this shared host lasts seconds,
            # and a path's whole round (4 prompts) takes ~8 s, so path by path it would fall on one path alone
            per_prompt: dict[str, list] = {k: [] for k in paths}
            for i in range(len(ids)):
                for key, path in paths.items():
                    per_prompt[key].append(path(i))
            for key, runs in per_prompt.items():
                if key == "llama_cpp":
                    rates[key].append(statistics.mean(runs))
                    continue
                rates[key].append(statistics.mean(rate for rate, _ in runs))
                tokens_of[key] = [t for _, t in runs]
            for key, twin in same.items():
                equal[key] = equal[key] and tokens_of[key] == tokens_of[twin]
    bandwidth = statistics.median(bandwidths)
    ceiling = bandwidth / weight_bytes
    tok_s = {k: statistics.median(v) for k, v in rates.items()}
    fig.update(
        weight_bytes=weight_bytes,
        read_bandwidth_gb_s=bandwidth / 1e9,
        ceiling_tok_s=ceiling,
        tok_s=tok_s,
        rounds=rates,
        fraction_of_ceiling={k: v / ceiling for k, v in tok_s.items() if not k.startswith("adapter_row")},
        compiled_greedy_equals_eager=equal["compiled"] and equal["compiled_aten"],
        row_kernel_vs_aten=tok_s["compiled"] / tok_s["compiled_aten"],
        adapter_compiled_greedy_equals_eager=equal["adapter_row"],
        compiled_vs_eager=tok_s["compiled"] / tok_s["eager"],
        adapter_cost_batch1=1 - tok_s["adapter_row"] / tok_s["compiled"],
        adapter_cost_batch1_eager=1 - tok_s["adapter_row_eager"] / tok_s["eager"],
    )
    if "llama_cpp" in tok_s:
        fig["vs_llama_cpp"] = {k: v / tok_s["llama_cpp"] for k, v in tok_s.items() if k != "llama_cpp"}
    return fig


def print_decode(fig: dict) -> None:
    t, c = fig["tok_s"], fig["ceiling_tok_s"]
    print(
        f"\nbatch-1 decode steps, in-process, {fig['torch_threads']} torch threads, {fig['tokens']} tokens x "
        f"{fig['prompts']} prompts, medians of {len(fig['rounds']['eager'])} rounds"
    )
    print(
        f"  read bandwidth {fig['read_bandwidth_gb_s']:.1f} GB/s (torch.sum over 1 GiB): ceiling {c:.1f} tok/s "
        f"for {fig['weight_bytes'] / 1e6:.0f} MB of weights"
    )
    labels = {
        "eager": "eager step (option.decode=eager)",
        "compiled": "compiled step (option.decode=compiled)",
        "compiled_aten": "compiled, ATen's products (no row kernel)",
        "llama_cpp": "llama.cpp, F32 GGUF of the same weights",
        "base_row_beside_adapters": "base row, an adapter loaded (compiled)",
        "adapter_row": "adapter row (compiled, rank-16 slot)",
        "adapter_row_eager": "adapter row (peft, eager)",
    }
    vs = fig.get("vs_llama_cpp", {})
    for key, label in labels.items():
        if key not in t:
            continue
        extra = f"{t[key] / c:5.0%} of ceiling"
        if key in vs:
            extra += f", {vs[key]:.2f}x llama.cpp"
        print(f"  {label:44s} {t[key]:6.1f} tok/s  {extra}")
    print(
        f"  compiled vs eager {fig['compiled_vs_eager']:.2f}x (greedy tokens equal: "
        f"{fig['compiled_greedy_equals_eager']}; compiled in {fig['compile_s']:.0f} s); the row kernel "
        f"{'on' if fig['row_kernel'] else 'off (did not build)'}: {fig['row_kernel_vs_aten']:.2f}x ATen's products"
    )
    print(
        f"  adapter cost at batch 1: compiled {fig['adapter_cost_batch1']:.0%} of the compiled base step "
        f"(target <= 10%); eager {fig['adapter_cost_batch1_eager']:.0%} of the eager one (greedy tokens equal: "
        f"{fig['adapter_compiled_greedy_equals_eager']})"
    )
