"""Start and stop the DJL Serving process on a model dir (``loraship serve`` and the tests)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .paths import runtime_dir

MAIN_CLASS = "ai.loraship.host.DjlHost"


class RuntimeMissing(Exception):
    pass


def java_command(model_dir: Path, host: str, port: int, tmpdir: str | None = None) -> list[str]:
    """The java command line; raise RuntimeMissing naming what to install when something is absent."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeMissing("java was not found on PATH: install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)")
    lib = runtime_dir()
    jars = sorted((lib / "djl").glob("*.jar"))
    if not any(j.name.startswith("python-") for j in jars):
        raise RuntimeMissing(f"DJL's Python engine jars are missing from {lib / 'djl'}: run `make runtime`")
    if not (lib / "host" / "ai" / "loraship" / "host" / "DjlHost.class").is_file():
        raise RuntimeMissing(f"the compiled DJL host is missing from {lib / 'host'}: run `make runtime`")
    classpath = os.pathsep.join([str(lib / "host"), str(lib / "djl" / "*")])
    # DJL names worker sockets /tmp/djl_sock.<19000+n> and kills "dangling" workers that hold
    # those names at start-up, so two servers on one host would kill each other's workers: each
    # server gets its own java.io.tmpdir.
    jvm = [f"-Djava.io.tmpdir={tmpdir}"] if tmpdir else []
    return [java, *jvm, "-cp", classpath, MAIN_CLASS, "--model-dir", str(Path(model_dir).resolve()),
            "--host", host, "--port", str(port)]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # The worker must run the interpreter that has this project's packages.
        "PYTHON_EXECUTABLE": sys.executable,
        "DJL_OFFLINE": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running DJL Serving process; use as a context manager or call ``stop()``."""

    def __init__(self, model_dir: Path, host: str = "127.0.0.1", port: int = 8080,
                 env: dict[str, str] | None = None, log_file=None):
        self.model_dir = Path(model_dir)
        self.host, self.port = host, port
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        self.tmpdir = tempfile.mkdtemp(prefix="djl-")  # short: unix socket paths max out at 107 bytes
        cmd = java_command(self.model_dir, host, port, self.tmpdir)
        # A new session: stop() can signal the JVM and the Python workers it started as one group.
        self.proc = subprocess.Popen(cmd, env=server_env(env), stdout=log_file, stderr=subprocess.STDOUT
                                     if log_file is not None else None, start_new_session=True)
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 300) -> float:
        """Block until ``GET /ping`` answers 200; return the seconds it took."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"DJL Serving exited with code {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"DJL Serving did not answer /ping within {timeout:.0f}s")

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        # Workers that outlived the JVM (e.g. after SIGKILL) share its process group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
