"""LoRA adapters: validate a folder, load it into the served model under a name, remove it.

The model becomes a ``peft.PeftModel`` when the first adapter arrives; requests then pick an
adapter per item and peft runs mixed batches with ``adapter_names=``.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from .errors import BadRequest, NotFound

log = logging.getLogger(__name__)
RESERVED = {"", "__base__"}


def validate_adapter_dir(path: str, *, allow_pickle: bool = False) -> dict:
    """Check an adapter folder before loading it; return its adapter_config.json."""
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
    has_st = os.path.isfile(os.path.join(path, "adapter_model.safetensors"))
    has_bin = os.path.isfile(os.path.join(path, "adapter_model.bin"))
    if not has_st and not (has_bin and allow_pickle):
        reason = ("only a pickle adapter_model.bin; set option.allow_pickle_adapters=true to allow it"
                  if has_bin else "no adapter_model.safetensors")
        raise BadRequest(f"adapter source {path!r} has {reason}", field="src")
    return cfg


class AdapterSet:
    """The adapters loaded into one model, by name."""

    def __init__(self, model, *, allow_pickle: bool = False):
        self.model = model
        self.allow_pickle = allow_pickle
        self.sources: dict[str, str] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.sources)

    def check(self, names) -> None:
        """Raise NotFound for the first unknown adapter name, listing the known ones."""
        for name in names:
            if name not in RESERVED and name not in self.sources:
                known = ", ".join(self.names()) or "none"
                raise NotFound(f"unknown adapter {name!r}; known adapters: {known} (or '__base__')",
                               field="adapters")

    def add(self, name: str, path: str) -> None:
        if name in RESERVED or not name or "/" in name:
            raise BadRequest(f"invalid adapter name {name!r}", field="name")
        with self._lock:
            if name in self.sources:
                raise BadRequest(f"adapter {name!r} is already registered", field="name")
            validate_adapter_dir(path, allow_pickle=self.allow_pickle)
            self._load(name, path)
            self.sources[name] = path
            log.info("adapter %s loaded", name)

    def update(self, name: str, path: str) -> None:
        with self._lock:
            if name not in self.sources:
                raise NotFound(f"unknown adapter {name!r}", field="name")
            validate_adapter_dir(path, allow_pickle=self.allow_pickle)
            self.model.delete_adapter(name)
            self._load(name, path)
            self.sources[name] = path

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self.sources:
                raise NotFound(f"unknown adapter {name!r}", field="name")
            self.model.delete_adapter(name)
            del self.sources[name]

    def _load(self, name: str, path: str) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                self.model.eval()
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BadRequest(f"adapter {name!r} from {path!r} does not fit the served model: {exc}",
                             field="src") from None
