"""Fixtures of the reliability suite: one shared real server, adapters good and bad, the soak switch.

The suite is about loraship's host (its limits, restarts and registry). The worker-crash cases that
users meet on real DJL Serving run on both servers in tests/conformance/test_worker_crash.py.

``make test`` runs the short suite. Tests marked ``soak`` (longer fuzz, overload, crash and churn runs)
are deselected unless the ``-m`` expression names ``soak`` (``make soak``) or ``LORASHIP_SOAK=1``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path
from unittest import mock

import pytest
from rel_support import JOB_QUEUE_SIZE, MAX_REQUEST_SIZE, PREDICT_TIMEOUT, SLOW_PIPELINE, ping
from tiny_models import save_random_adapter

import loraship.runtime
from loraship.build import build_model_dir
from loraship.runtime import Server, free_port


def soak_enabled(config) -> bool:
    return "soak" in (config.option.markexpr or "") or os.environ.get("LORASHIP_SOAK") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long reliability runs (make soak); deselected by default")


def pytest_collection_modifyitems(config, items):
    if soak_enabled(config):
        return
    keep = [i for i in items if "soak" not in i.keywords]
    dropped = [i for i in items if "soak" in i.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


_RUNNING: list[Live] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the shared server after the suite's last test, not at the end of the whole session."""
    yield  # the test's own fixtures are torn down first
    if nextitem is None or Path(nextitem.path).parent != Path(__file__).parent:
        for live in _RUNNING:
            live.stop()


# ---- adapters --------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this creates a file: the proof that a pickle was (or was not) loaded."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


@pytest.fixture(scope="session")
def adapter_root(tiny_neox, tiny_llama, tmp_path_factory) -> Path:
    """The allowed root (option.adapter_roots) with good adapters, plus bad ones beside them."""
    root = tmp_path_factory.mktemp("adapter-root")
    for seed, name in enumerate(("alpha", "beta", "gamma", "delta", "epsilon"), start=1):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    save_random_adapter(tiny_llama, root / "for-llama", seed=7)
    pickled = shutil.copytree(root / "gamma", root / "pickle-only")
    (pickled / "adapter_model.safetensors").unlink()
    with open(pickled / "adapter_model.bin", "wb") as f:
        pickle.dump(_Evil(root.parent / "pickle-was-loaded"), f)
    corrupt = shutil.copytree(root / "gamma", root / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    return root


# ---- the shared server -------------------------------------------------------------------------------


class Live:
    """The suite's server: restartable (a full restart keeps the model dir and appends to one log)."""

    def __init__(self, model_dir: Path, log_path: Path, env: dict[str, str]):
        self.model_dir, self.log_path, self.env = model_dir, log_path, env
        self.server: Server | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    @property
    def model_name(self) -> str:
        """The model's name in URLs: DJL's, the folder name with each non-word character ``_``."""
        return self.server.model_name

    @property
    def adapters_url(self) -> str:
        return f"{self.url}/models/{self.model_name}/adapters"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, default_host: bool = False) -> float:
        """Start and wait for /ping; ``default_host`` leaves out --host to get the java host's default."""
        log = open(self.log_path, "a")
        real = loraship.runtime.java_command

        def without_host(*args, **kwargs):
            cmd = real(*args, **kwargs)
            i = cmd.index("--host")
            return cmd[:i] + cmd[i + 2 :]

        with mock.patch.object(loraship.runtime, "java_command", without_host if default_host else real):
            self.server = Server(self.model_dir, port=free_port(), log_file=log, env=self.env, kind="host")
        log.close()  # the child holds its own descriptor
        try:
            took = self.server.wait_ready(timeout=240)
        except Exception:
            print(self.log_text()[-5000:])
            self.server.stop()
            raise
        return took

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until /ping answers 200; fails at once, with the log's end, if the server has exited."""
        deadline = time.monotonic() + timeout
        while self.server.proc.poll() is None and time.monotonic() < deadline:
            if ping(self.url) == 200:
                return
            time.sleep(0.2)
        state = "has exited" if self.server.proc.poll() is not None else f"did not answer /ping in {timeout:.0f}s"
        raise RuntimeError(f"the suite's server {state}; its log ends with:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def restart(self, default_host: bool = False) -> float:
        self.stop()
        return self.start(default_host=default_host)


@pytest.fixture(scope="session")
def live(djl_available, tiny_neox, adapter_root, tmp_path_factory):
    """One server for the suite: alpha (the seed adapter) and beta from adapters/, the slow pipeline,
    a small job queue, a 64 KiB request limit and a short predict_timeout."""
    model_dir = build_model_dir(
        str(tiny_neox),
        tmp_path_factory.mktemp("md") / "rel",
        {"alpha": adapter_root / "alpha", "beta": adapter_root / "beta"},
        max_new_tokens=16,
        predict_timeout=PREDICT_TIMEOUT,
        options={"adapter_roots": str(adapter_root), "pipeline": "slow_pipeline:Slow", "default_max_new_tokens": "4"},
    )
    (model_dir / "slow_pipeline.py").write_text(SLOW_PIPELINE)
    env = {"SERVING_JOB_QUEUE_SIZE": str(JOB_QUEUE_SIZE), "SERVING_MAX_REQUEST_SIZE": str(MAX_REQUEST_SIZE)}
    srv = Live(model_dir, tmp_path_factory.mktemp("logs") / "server.log", env)
    srv.start()
    _RUNNING.append(srv)
    yield srv
    srv.stop()
    _RUNNING.remove(srv)


@pytest.fixture
def healthy(live):
    """The shared server, answering /ping before and after the test (a test that breaks it fails here)."""
    live.wait_healthy()
    yield live
    live.wait_healthy()
