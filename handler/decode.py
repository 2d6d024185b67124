"""A one-row decode step compiled over a static KV cache, for the running batch when it has one row.

Eager ``transformers`` decoding of a small model at batch 1 spends about a third of each step outside the
matrix products (30 layers of small ops, each a Python call and a kernel launch). ``torch.compile`` over
transformers' ``StaticCache`` fuses those ops into a few kernels and keeps the shapes fixed, so the step
is bound by reading the weights (the README's performance section has the figures). Compiling takes
tens of seconds: continuous batching compiles it at start-up, before the model reports ready; static
batching's streams compile it on a background thread at their first step and decode eagerly until
:attr:`CompiledDecoder.ready` is set. The engine copies a row's cache in when the row is alone and back
out when another row joins.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import torch
from transformers import DynamicCache, StaticCache

log = logging.getLogger(__name__)


def pick_decode(name: str, device: torch.device, quantize: str = "") -> str:
    """``auto`` is ``compiled`` on CPU when inductor has a C++ compiler to build with (measured faster at
    batch 1: the README's performance section) and ``eager`` elsewhere: on CUDA the compiled path is
    offered (CUDA graphs) but not yet measured, and bitsandbytes' layers do not compile."""
    if name != "auto":
        return name
    if device.type != "cpu" or quantize:
        return "eager"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # no compiler (or no inductor): nothing to build the CPU kernels with
        return "eager"
    return "compiled"


def compile_options(device: torch.device) -> dict:
    """Inductor options for the decode step: on CUDA the step is captured as a CUDA graph (no per-kernel
    launch cost). On CPU the defaults: ``freezing`` (weights folded in as constants) and ``cpp_wrapper``
    measured no faster at batch 1 (the README's performance section), and a frozen weight would not see
    an in-place change to it."""
    if device.type == "cuda":
        return {"triton.cudagraphs": True}
    return {}


def attention_twin(model, attention: str = "eager"):
    """The same model (its very weight tensors, no copy) with its own config, on another attention kernel.

    In the compiled one-row step, transformers' eager attention (a matmul, a softmax, a matmul) fuses into
    inductor's kernels, where SDPA's CPU kernel costs ~100 us a layer over a short cache (measured ~10%
    of a step); the served model keeps its own attention for prefill and batched steps."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = attention
    with torch.device("meta"):
        twin = type(model)(config)
    twin.load_state_dict(model.state_dict(), assign=True, strict=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary frequencies) too
        owner, _, leaf = name.rpartition(".")
        twin.get_submodule(owner)._buffers[leaf] = buffer
    return twin.eval()


class CompiledDecoder:
    """One row's decode step (``model`` at batch 1) compiled over a ``max_len``-token static cache."""

    def __init__(self, model, max_len: int, device: torch.device, warm: bool = True):
        self.model = model
        """The served model this decoder stands in for (the engine uses it only for that model's rows)."""
        self.twin = attention_twin(model) if device.type == "cpu" else model
        self.max_len = max_len
        self.device = device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.compile_seconds: float | None = None
        self.steps = 0
        """Steps decoded here (the warm-up's not counted)."""
        self._step = torch.compile(self._forward, fullgraph=True, dynamic=False, options=compile_options(device))
        if warm:
            threading.Thread(target=self.warm_up, name="decode-compile", daemon=True).start()

    def _forward(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        out = self.twin(
            input_ids=ids, position_ids=position[None], cache_position=position, cache=self.cache, use_cache=True
        )
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile (two steps on a dummy row: the first traces, the second checks nothing recompiles)."""
        started = time.perf_counter()
        try:
            ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.cache.reset()
            self._forward(ids, torch.tensor([0], device=self.device))  # eager: allocates the cache's tensors
            # Past dynamo's recompile limit (one compiled code object serves every decoder in a process) it
            # would run eagerly without a word: fail instead, and the engine stays eager.
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                for pos in (1, 2):
                    self._step(ids, torch.tensor([pos], device=self.device))
            self.compile_seconds = time.perf_counter() - started
            log.info("compiled the one-row decode step in %.1f s", self.compile_seconds)
            self.ready.set()
        except Exception as exc:  # the engine keeps decoding eagerly
            self.error = exc
            log.warning("compiling the one-row decode step failed; decoding stays eager: %s", exc)

    def fail(self, exc: BaseException) -> None:
        """A step failed (its row's first ``length`` cached tokens are intact either way): no more steps here;
        the engine exports the row's cache and decodes eagerly."""
        self.error = exc
        self.ready.clear()
        log.warning("the compiled decode step failed; decoding stays eager from here: %s", exc)

    def fits(self, length: int) -> bool:
        """Whether a row with ``length`` cached tokens can take one more step here."""
        return self.ready.is_set() and length < self.max_len

    def load(self, cache: DynamicCache, length: int) -> None:
        """Copy a one-row dynamic cache of ``length`` tokens into the static cache."""
        for dst, src in zip(self.cache.layers, cache.layers, strict=True):
            dst.keys[:, :, :length].copy_(src.keys[:, :, -length:])
            dst.values[:, :, :length].copy_(src.values[:, :, -length:])
            dst.cumulative_length.fill_(length)

    def export(self, length: int) -> DynamicCache:
        """The first ``length`` tokens of the static cache as a dynamic cache (copies)."""
        layers = self.cache.layers
        return DynamicCache([(la.keys[:, :, :length].clone(), la.values[:, :, :length].clone()) for la in layers])

    @torch.inference_mode()
    def step(self, next_id: torch.Tensor, length: int) -> torch.Tensor:
        """Logits [1, vocab] after feeding ``next_id`` at position ``length`` (the cache then holds length + 1)."""
        self.steps += 1
        # Only the guards that tell this decoder's graph from others' run (the shapes never change, and the
        # weights are the graph's inputs): dynamo's full guard check costs ~1 ms a step (measured).
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            logits = self._step(next_id.view(1, 1), torch.tensor([length], device=self.device))
        return logits.clone()
