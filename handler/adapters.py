"""LoRA adapters: validate a folder, load it into the served model under a name, evict, remove.

Split as peft splits its tuners: ``validate_adapter_dir`` / ``check_fits`` read files and decide
whether an adapter may load; ``AdapterSet`` owns the lifecycle (load, LRU eviction, reload from
disk on demand, pinning). The model becomes a ``peft.PeftModel`` when the first adapter arrives;
requests then pick an adapter per item and peft runs mixed batches with ``adapter_names=``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict

from .errors import BadRequest, Conflict, NotFound
from .metrics import Metrics

log = logging.getLogger(__name__)
RESERVED = {"", "__base__"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def validate_adapter_dir(path: str, *, allow_pickle: bool = False) -> dict:
    """Check an adapter folder's files before loading it; return its adapter_config.json."""
    if not os.path.isdir(path):
        raise BadRequest(f"adapter source {path!r} is not a folder", field="src")
    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(cfg_path):
        raise BadRequest(f"adapter source {path!r} has no adapter_config.json", field="src")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise BadRequest(f"adapter_config.json in {path!r} is unreadable: {exc}", field="src") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise BadRequest(f"adapter in {path!r} is not a LoRA adapter (peft_type={cfg.get('peft_type')!r})", field="src")
    has_st = os.path.isfile(os.path.join(path, "adapter_model.safetensors"))
    has_bin = os.path.isfile(os.path.join(path, "adapter_model.bin"))
    if not has_st and not (has_bin and allow_pickle):
        reason = (
            "only a pickle adapter_model.bin; set option.allow_pickle_adapters=true to allow it"
            if has_bin
            else "no adapter_model.safetensors"
        )
        raise BadRequest(f"adapter source {path!r} has {reason}", field="src")
    return cfg


def check_source_allowed(src: str, roots: list[str]) -> str:
    """The real path of ``src`` if it lies under one of ``roots`` (symlinks and ``..`` resolved)."""
    real = os.path.realpath(src)
    for root in roots:
        root = os.path.realpath(root)
        if real == root or real.startswith(root + os.sep):
            return real
    raise BadRequest(
        f"adapter source {src!r} is outside the allowed roots ({', '.join(roots)}); "
        "add its folder to option.adapter_roots",
        field="src",
    )


def check_fits(base_model, path: str, vocab_size: int) -> None:
    """Refuse an adapter made for another base model: every LoRA weight must match a module's shape."""
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        return  # a permitted pickle adapter: peft's own load reports mismatches
    from safetensors import safe_open

    modules = dict(base_model.named_modules())
    try:
        with safe_open(weights, "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise BadRequest(f"adapter weights in {path!r} are unreadable: {exc}", field="src") from None
    for key, shape in shapes.items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        module = modules.get(m.group(1))
        if module is None:
            raise BadRequest(
                f"adapter in {path!r} targets {m.group(1)!r}, which the served model does not have "
                "(was it trained on another base model?)",
                field="src",
            )
        in_f = getattr(module, "in_features", None) or getattr(module, "num_embeddings", None)
        out_f = getattr(module, "out_features", None) or getattr(module, "embedding_dim", None)
        expected = (shape[0], in_f) if m.group(2) == "A" else (out_f, shape[1])
        if in_f is not None and out_f is not None and shape != expected and "embed" not in m.group(1):
            raise BadRequest(
                f"adapter in {path!r} does not fit the served model: {key} has shape "
                f"{list(shape)}, the model's {m.group(1)} needs {list(expected)}",
                field="src",
            )


def adapter_tokenizer_path(path: str) -> str | None:
    return path if any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES) else None


class AdapterSet:
    """The adapters a worker serves, by name: sources on disk, at most ``max_loaded`` in memory."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        allow_pickle: bool = False,
        roots: list[str] | None = None,
        max_loaded: int = 0,
        pinned: set[str] | None = None,
        metrics: Metrics | None = None,
    ):
        self.base = model
        self.model = model
        self.tokenizer = tokenizer
        self.allow_pickle = allow_pickle
        self.roots = roots or []
        self.max_loaded = max_loaded
        self.pinned = set(pinned or ())
        self.sources: dict[str, str] = {}
        self.tokenizers: dict[str, object] = {}
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.metrics = metrics or Metrics(enabled=False)

    def names(self) -> list[str]:
        return sorted(self.sources)

    def check(self, names) -> None:
        """Raise NotFound for the first unknown adapter name, listing the known ones."""
        for name in names:
            if name not in RESERVED and name not in self.sources:
                known = ", ".join(self.names()) or "none"
                raise NotFound(f"unknown adapter {name!r}; known adapters: {known} (or '__base__')", field="adapters")

    def tokenizer_for(self, name: str):
        return self.tokenizers.get(name, self.tokenizer)

    def add(self, name: str, src: str, *, pin: bool = False) -> None:
        if name in RESERVED or not NAME.match(name or ""):
            raise BadRequest(f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_', '-'", field="name")
        if name in "lora_":  # peft would confuse it with its own parameter prefix and may re-initialise weights
            raise BadRequest(
                f"invalid adapter name {name!r}: it must not be part of peft's prefix 'lora_'", field="name"
            )
        with self._lock:
            path = check_source_allowed(src, self.roots) if self.roots else os.path.realpath(src)
            if name in self.sources:
                if self.sources[name] == path:
                    return  # the same adapter again (seed keys and adapters/ both name it)
                raise Conflict(
                    f"adapter {name!r} is already registered from {self.sources[name]!r}; "
                    "unregister it first to replace it",
                    field="name",
                )
            self._prepare(name, path)
            self.sources[name] = path
            if pin:
                self.pinned.add(name)
            self._evict()
            log.info("adapter %s registered", name)

    def update(self, name: str, src: str) -> None:
        with self._lock:
            if name not in self.sources:
                raise NotFound(f"unknown adapter {name!r}", field="name")
            path = check_source_allowed(src, self.roots) if self.roots else os.path.realpath(src)
            old = self.sources[name]
            self._unload(name)
            try:
                self._prepare(name, path)
            except Exception:
                self._prepare(name, old)  # keep serving the previous version
                raise
            self.sources[name] = path

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.sources:
                raise NotFound(f"unknown adapter {name!r}", field="name")
            self._unload(name)
            del self.sources[name]
            self.tokenizers.pop(name, None)
            self.pinned.discard(name)

    def ensure_loaded(self, names):
        """Reload evicted adapters a batch needs, evict others beyond ``max_loaded`` (LRU); return the
        model to run them on (the base, or peft's wrapper of it once an adapter has loaded)."""
        needed = [n for n in dict.fromkeys(names) if n not in RESERVED]
        with self._lock:
            for name in needed:
                if name not in self.loaded:
                    self._load(name, self.sources[name])
                self.loaded.move_to_end(name)
            self._evict(keep=set(needed))
            return self.model

    # -- internals -------------------------------------------------------------------------------
    def _prepare(self, name: str, path: str) -> None:
        validate_adapter_dir(path, allow_pickle=self.allow_pickle)
        tok_path = adapter_tokenizer_path(path)
        if tok_path:
            from transformers import AutoTokenizer

            from .generation import prepare_tokenizer

            tok = AutoTokenizer.from_pretrained(tok_path)
            if tok.get_vocab() != self.tokenizer.get_vocab():
                prepare_tokenizer(tok)
                self._grow_embeddings(len(tok))
                self.tokenizers[name] = tok
        check_fits(self.base, path, len(self.tokenizer_for(name)))
        self._load(name, path)

    def _grow_embeddings(self, vocab: int) -> None:
        """Adapters with added tokens carry their own embedding rows; the base needs room for them."""
        emb = self.base.get_input_embeddings()
        if emb.num_embeddings < vocab:
            if self.model is not self.base:
                raise BadRequest(
                    "an adapter with added tokens must be registered before adapters without them "
                    f"(it needs {vocab} embedding rows, the base has {emb.num_embeddings})",
                    field="src",
                )
            self.base.resize_token_embeddings(vocab)

    def _load(self, name: str, path: str) -> None:
        from peft import PeftModel

        start = time.perf_counter()
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.model.eval()
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BadRequest(
                f"adapter {name!r} from {path!r} does not fit the served model: {exc}", field="src"
            ) from None
        self.loaded[name] = None
        self.metrics.adapter_loaded(name, time.perf_counter() - start)

    def _unload(self, name: str) -> None:
        if name in self.loaded:
            self.model.delete_adapter(name)
            del self.loaded[name]
            self.metrics.adapter_unloaded(name)

    def _evict(self, keep: set[str] = frozenset()) -> None:
        if not self.max_loaded:
            return
        for name in list(self.loaded):
            if len(self.loaded) <= self.max_loaded:
                break
            if name not in self.pinned and name not in keep:
                self._unload(name)
                log.info("adapter %s evicted (max_adapters=%d)", name, self.max_loaded)
