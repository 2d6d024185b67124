"""Start a real server for a test (real DJL Serving or loraship's host), printing its log's tail when it
fails to come up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

from loraship.runtime import RuntimeMissing, Server, free_port, java_command, resolve_server

#: The servers a both-server test runs on: loraship's host and the real DJL Serving ($DJL_SERVING_HOME).
KINDS = ("host", "djl")


def missing(what: str) -> NoReturn:
    """A prerequisite is absent: a failure that says what (``make setup`` provides all of them; a skip would
    count as passed what never ran)."""
    pytest.fail(f"missing: {what}")


def server_args(kind: str) -> dict:
    """``Server`` arguments for ``kind``; a missing server fails."""
    try:
        resolved, home = resolve_server(kind)
        if resolved == "host":
            java_command(Path("."), "127.0.0.1", 0)
    except RuntimeMissing as exc:
        missing(f"the {kind} server: {exc}")
    return {"kind": resolved, "djl_home": home}


def start_server(
    model_dir, tmp_path_factory, kind: str = "host", timeout: float = 240, env: dict | None = None
) -> Server:
    """A ready server on a free port; ``srv.log_path`` is its log."""
    args = server_args(kind)
    log_path = tmp_path_factory.mktemp("logs") / f"{kind}-{Path(model_dir).name}.log"
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        srv = Server(model_dir, port=free_port(), log_file=log, env=env, **args)
    srv.log_path = log_path
    try:
        srv.wait_ready(timeout=timeout)
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        srv.stop()
        raise
    return srv


def processes_left(*pgrep_args: str, timeout: float = 10) -> list[str]:
    """PIDs ``pgrep ARGS`` still finds once ``timeout`` has passed (polled: [] as soon as none is left)."""
    deadline = time.monotonic() + timeout
    while True:
        left = subprocess.run(["pgrep", *pgrep_args], capture_output=True, text=True).stdout.split()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
