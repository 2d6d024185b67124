"""A one-row decode step compiled over a static KV cache, for the running batch when it has one row.

Eager ``transformers`` decoding of a small model at batch 1 spends about a third of each step outside the
matrix products (30 layers of small ops, each a Python call and a kernel launch). ``torch.compile`` over
transformers' ``StaticCache`` fuses those ops into a few kernels, so the step is bound by reading the
weights (the README's performance section has the figures): its products run on a one-row kernel built for
the CPU (:mod:`.row_kernel`), its attention reads only the row's part of the cache (:func:`window_attention`,
one graph for every length), and C++ calls its kernels (:func:`compile_options`). Compiling takes tens of
seconds (a minute the first time on CPU, before inductor's on-disk cache holds it): continuous
batching compiles it at start-up, before the model reports ready; static batching's streams compile it on
a background thread at their first step and decode eagerly until :attr:`CompiledDecoder.ready` is set.
The engine copies a row's cache in when the row is alone and back out when another row joins. With adapter
slots (``option.enable_lora``), a second graph runs a row alone on an adapter: its LoRA weights are copied
into the slots when the row starts decoding alone.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from . import row_kernel

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
    launch cost). On CPU the step's ~500 kernel and operator calls are made from C++ (``cpp_wrapper``)
    rather than Python: ~1.06x the step, measured. Its wrapper is built apart from the kernels at -O1
    (``cpp_wrapper_build_separate``; built with them at -O3 it took ~3 min), ~40-60 s the first time on 2
    cores, then inductor's on-disk cache holds it. No size, stride or alignment checks around each call
    (they cost ~0.25 ms a step when Python made the calls; the 1.06x was measured without them): the shapes
    are fixed but for the window, and the row kernel's shape function is tested. ``freezing`` (weights folded
    in as constants) measured no faster (the README's performance section), and a frozen weight would not see
    an in-place change to it."""
    if device.type == "cuda":
        return {"triton.cudagraphs": True}
    return {
        "cpp_wrapper": True,
        "cpp_wrapper_build_separate": True,
        "size_asserts": False,
        "alignment_asserts": False,
    }


WINDOW = "loraship_window"


def window_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, window=None, **kwargs):
    """Eager attention over the static cache's first ``window.shape[0]`` positions only (the row's tokens so
    far; ``window`` is a graph input whose length is dynamic), where transformers' eager attention reads every
    position of the cache and repeats the key/value heads for each query head: over a 512-token cache that
    took ~5% of the step, growing with the cache (measured). Query heads are grouped by the key/value head
    they share instead."""
    if kwargs.get("s_aux") is not None:  # attention sinks: not written here (the step then stays eager)
        raise NotImplementedError("window attention has no attention sinks")
    n = key.shape[2] if window is None else window.shape[0]
    key, value = key[:, :, :n], value[:, :, :n]
    b, heads, q, d = query.shape
    groups = key.shape[1]
    scores = torch.matmul(query.reshape(b, groups, heads // groups * q, d), key.transpose(2, 3)) * scaling
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if attention_mask is not None:  # [b, 1, q, cache]: causal, and sliding windows where the model has them
        scores = (scores.view(b, groups, heads // groups, q, n) + attention_mask[:, :, None, :, :n]).view_as(scores)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).reshape(b, heads, q, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(WINDOW, window_attention)
AttentionMaskInterface.register(WINDOW, eager_mask)


class RowLinear(nn.Linear):
    """A twin's linear layer on ``loraship::row_linear`` (:mod:`.row_kernel`): one row's fp32 product
    streams the weights faster than ATen's (MKL's), which bounds the batch-1 step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.loraship.row_linear(x, self.weight, self.bias)


def attention_twin(model, attention: str = WINDOW, rows: bool = True):
    """The same model (its very weight tensors, no copy) with its own config, on another attention kernel,
    its fp32 linear layers on :class:`RowLinear` where that kernel builds (and ``rows``).

    The compiled one-row step attends with :func:`window_attention` (written as a matmul, a softmax and a
    matmul, which inductor fuses around; SDPA's CPU kernel cost ~100 us a layer over a short cache, ~10% of
    a step, measured); the served model keeps its own attention for prefill and batched steps."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = attention
    with torch.device("meta"):
        twin = type(model)(config)
    twin.load_state_dict(base_state(model), assign=True, strict=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary frequencies) too
        owner, _, leaf = name.rpartition(".")
        twin.get_submodule(owner)._buffers[leaf] = buffer
    if rows and row_kernel.load():
        for module in twin.modules():
            if type(module) is nn.Linear and module.weight.dtype == torch.float32:
                module.__class__ = RowLinear
    return twin.eval()


class LoraSlot(nn.Linear):
    """A twin's linear layer with room for one LoRA adapter of rank up to ``lora_a.shape[0]``: ``lora_a``
    [rank, in] and ``lora_b`` [out, rank] (scaled, zero-padded; zeros: no adapter) are graph inputs, so one
    compiled graph serves every adapter that fits. The two thin products are written as reductions, so inductor
    generates them into its own kernels instead of calling a library matmul for each (two more calls a slot,
    each with its per-call cost)."""

    row = False
    """Whether the base product is :class:`RowLinear`'s (as the layer's was before it became a slot)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = (x.unsqueeze(-2) * self.lora_a).sum(-1)
        base = RowLinear.forward(self, x) if self.row else super().forward(x)
        return base + (low.unsqueeze(-2) * self.lora_b).sum(-1)


def lora_twin(model, rank: int, targets: tuple[str, ...] = (), rows: bool = True):
    """:func:`attention_twin` whose linears (but the output head) are :class:`LoraSlot` of ``rank``, all zeros:
    those whose names end in one of ``targets`` (vLLM's ``target_modules``), or every one."""
    twin = attention_twin(model, rows=rows)
    head = twin.get_output_embeddings()
    for name, module in list(twin.named_modules()):
        if targets and not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if type(module) in (nn.Linear, RowLinear) and module is not head:
            module.row = type(module) is RowLinear
            module.__class__ = LoraSlot
            w = module.weight
            module.register_buffer("lora_a", w.new_zeros(rank, w.shape[1]), persistent=False)
            module.register_buffer("lora_b", w.new_zeros(w.shape[0], rank), persistent=False)
    return twin


def lora_weights(base, config, adapter: str, rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Each module's (A, B x scaling) of peft's ``adapter`` (its ``config``) in ``base`` (the model peft
    wrapped in place), keyed by module name; None where the compiled step cannot run it: a rank over ``rank``,
    DoRA, LoRA biases, trained copies of modules or tokens, or a layer that is not a plain linear."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    if getattr(config, "peft_type", None) != "LORA" or config.use_dora or getattr(config, "lora_bias", False):
        return None
    if config.modules_to_save or getattr(config, "trainable_token_indices", None):
        return None
    out = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if type(module) is not LoraLinear or module.r[adapter] > rank or module.fan_in_fan_out:
            return None
        out[name] = (module.lora_A[adapter].weight, module.lora_B[adapter].weight * module.scaling[adapter])
    return out or None


def base_model(model):
    """The model peft wraps (in place), or ``model`` itself when peft has not wrapped it."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def base_state(model) -> dict[str, torch.Tensor]:
    """``model``'s own weights by their names before peft wrapped it in place (its adapters' left out)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_" not in k  # lora_A, lora_B, lora_embedding_*, lora_magnitude_vector
    }


class CompiledDecoder:
    """One row's decode step (``model`` at batch 1) compiled over a ``max_len``-token static cache."""

    def __init__(
        self,
        model,
        max_len: int,
        device: torch.device,
        warm: bool = True,
        lora_rank: int = 0,
        lora_targets: tuple[str, ...] = (),
        rows: bool = True,
    ):
        """``rows``: whether the products may run on the row kernel (``loraship perf`` compares without)."""
        # One position more than a row may fill: attention reads a window of the cache (the row's tokens), and a
        # window the cache's full length would be a special case the dynamic graph does not cover.
        self.cache = StaticCache(config=model.config, max_cache_len=max_len + 1)
        if any(type(layer) is not StaticLayer for layer in self.cache.layers):
            # a sliding-window layer keeps its last tokens only: neither a row's window nor load/export fit it
            raise ValueError("the compiled decode step needs a full static cache; sliding-window layers decode eagerly")
        self.model = model
        """The served base model this decoder stands in for (also once peft has wrapped it, on CPU)."""
        self.twin = attention_twin(model, rows=rows) if device.type == "cpu" else model
        self.row_kernel = any(isinstance(m, RowLinear) for m in self.twin.modules())
        """Whether the step's products run on :class:`RowLinear` (or ATen's)."""
        self.lora_rank = lora_rank if device.type == "cpu" else 0
        """The adapter slot's rank (``option.max_lora_rank``); 0: adapter rows decode eagerly."""
        self.lora = lora_twin(model, self.lora_rank, lora_targets, rows) if self.lora_rank else None
        self.lora_ready = threading.Event()
        self._slots = {n: m for n, m in self.lora.named_modules() if isinstance(m, LoraSlot)} if self.lora else {}
        self._refused: set[tuple[str, int]] = set()
        """(adapter, id of its peft config) that do not fit the slots (a new version of one is asked anew)."""
        self.max_len = max_len
        self.device = device
        self.windowed = self.twin is not model
        """Whether the step attends over its row's window of the cache (:func:`window_attention`; on CPU)."""
        self._window = torch.empty(max_len + 1, device=device)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.compile_seconds: float | None = None
        self.steps = 0
        """Steps decoded here (the warm-up's not counted)."""
        options = compile_options(device)
        self._step = torch.compile(self._forward, fullgraph=True, dynamic=False, options=options)
        self._step_lora = torch.compile(self._forward_lora, fullgraph=True, dynamic=False, options=options)
        self._adapter = False
        """Whether the next steps take the adapter graph (:meth:`take`)."""
        if warm:
            threading.Thread(target=self.warm_up, name="decode-compile", daemon=True).start()

    def _logits(self, twin, ids: torch.Tensor, position: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        extra = {"window": window} if self.windowed else {}
        out = twin(
            input_ids=ids,
            position_ids=position[None],
            cache_position=position,
            cache=self.cache,
            use_cache=True,
            **extra,
        )
        return out.logits[:, -1, :]

    # Two methods, so two code objects: dynamo keeps each graph in its own cache.
    def _forward(self, ids: torch.Tensor, position: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        return self._logits(self.twin, ids, position, window)

    def _forward_lora(self, ids: torch.Tensor, position: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        return self._logits(self.lora, ids, position, window)

    def _compile(self, step, ids: torch.Tensor) -> float:
        """Two steps on a dummy row (the first traces, the second checks nothing recompiles); seconds taken.
        Past dynamo's recompile limit (one compiled code object serves every decoder in a process) a step
        would run eagerly without a word: fail instead, and the engine stays eager. The window's length is
        dynamic (one graph for every length), and an error if something in the graph fixed it."""
        started = time.perf_counter()
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            for pos in (1, 2):
                window = self._window[: pos + 1]
                torch._dynamo.mark_dynamic(window, 0, min=2, max=self.max_len)
                step(ids, torch.tensor([pos], device=self.device), window)
        return time.perf_counter() - started

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile the step, and the adapter graph too if there are slots; only then is the decoder ready,
        since the warm-up writes the static cache a row would be using."""
        started = time.perf_counter()
        try:
            ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self.cache.reset()
            self._forward(ids, torch.tensor([0], device=self.device), self._window[:1])  # eager: allocates the cache
            self._compile(self._step, ids)
            self.compile_seconds = time.perf_counter() - started
            products = "the row kernel" if self.row_kernel else "ATen"
            log.info("compiled the one-row decode step in %.1f s (products on %s)", self.compile_seconds, products)
        except Exception as exc:  # the engine keeps decoding eagerly
            self.error = exc
            log.warning("compiling the one-row decode step failed; decoding stays eager: %s", exc)
            return
        if self.lora is not None:
            try:
                seconds = self._compile(self._step_lora, ids)
                log.info("compiled the adapter decode step (rank %d) in %.1f s", self.lora_rank, seconds)
                self.lora_ready.set()
            except Exception as exc:  # adapter rows keep decoding eagerly
                log.warning("compiling the adapter decode step failed; adapter rows stay eager: %s", exc)
        self.ready.set()

    def serves(self, model) -> bool:
        """Whether ``model`` is the base this decoder stands in for, or (on CPU, where the step runs on a twin
        that peft does not wrap) peft's wrapper of it, with the embeddings the twin shares (an adapter's added
        tokens replace them: from then on every row decodes eagerly)."""
        if model is not self.model and (self.twin is self.model or base_model(model) is not self.model):
            return False
        mine, served = self.twin.get_input_embeddings().weight, self.model.get_input_embeddings().weight
        return mine.data_ptr() == served.data_ptr() and mine.shape == served.shape

    def take(self, model, adapter: str) -> bool:
        """Point the next steps at the base graph, or at the adapter graph with ``adapter``'s weights copied
        into its slots; False where the adapter cannot run here (not compiled, or :func:`lora_weights`)."""
        if not adapter:
            self._adapter = False
            return True
        if not self.lora_ready.is_set():
            return False
        config = model.peft_config.get(adapter)
        if (adapter, id(config)) in self._refused:  # a lone row asks at every step: walk the model once
            return False
        weights = lora_weights(self.model, config, adapter, self.lora_rank)
        if weights is None or not weights.keys() <= self._slots.keys():
            self._refused.add((adapter, id(config)))
            return False
        for name, slot in self._slots.items():
            slot.lora_a.zero_()
            slot.lora_b.zero_()
            if name in weights:
                a, b = weights[name]
                slot.lora_a[: a.shape[0]].copy_(a)
                slot.lora_b[:, : b.shape[1]].copy_(b)
        self._adapter = True
        return True

    def fail(self, exc: BaseException) -> None:
        """A step failed (its row's first ``length`` cached tokens are intact either way): no more steps here;
        the engine exports the row's cache and decodes eagerly."""
        self.error = exc
        self.ready.clear()
        log.warning("the compiled decode step failed; decoding stays eager from here: %s", exc)

    def fits(self, length: int) -> bool:
        """Whether a row with ``length`` cached tokens (at least one: the graph's window is 2 or more) can take
        one more step here."""
        return self.ready.is_set() and 0 < length < self.max_len

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
            step = self._step_lora if self._adapter else self._step
            logits = step(next_id.view(1, 1), torch.tensor([length], device=self.device), self._window[: length + 1])
        return logits.clone()
