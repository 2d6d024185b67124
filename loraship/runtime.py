"""Start and stop a DJL Serving process on a model dir (``loraship serve``, the demo, perf and the tests).

Two servers run a model dir:

- ``djl``: the real ``ai.djl.serving.ModelServer`` from a DJL Serving distribution folder (``lib/`` with
  the serving, wlm and python jars; ``conf/`` with log4j2.xml), started the way the LMI container starts
  it: its JVM options, DJL's thread policy, a ``config.properties`` with ``model_store`` = the model
  dir, and private home, cache and temp folders.
- ``host``: loraship's own HTTP host over DJL's real Python engine (``make runtime`` builds it into
  ``lib/``), for machines without a DJL Serving install.

``auto`` picks ``djl`` when a DJL home is configured (``--djl-home`` or ``$DJL_SERVING_HOME``).
"""

from __future__ import annotations

import os
import re
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
from typing import Annotated, Literal

from .core.errors import LorashipError
from .core.paths import runtime_dir
from .handler.settings import Flag, Settings

HOST_MAIN = "ai.loraship.host.DjlHost"
DJL_MAIN = "ai.djl.serving.ModelServer"
SERVERS = ("auto", "djl", "host")
#: The LMI container's JVM options (lmi.Dockerfile's JAVA_OPTS).
LMI_JAVA_OPTS = ("-Xmx1g", "-Xms1g", "-XX:+ExitOnOutOfMemoryError", "-Dai.djl.util.cuda.fork=true")
#: What lmi.Dockerfile exports, unless the caller set them.
LMI_ENV = {"MODEL_LOADING_TIMEOUT": "1200", "PREDICT_TIMEOUT": "240"}
#: The worker's torch threads: DJL's start-script policy, kept from the README's thread figures (a second
#: thread is faster on a quiet host and many times slower beside one busy process).
DEFAULT_THREADS = 1


_BUILD_IT = (
    "run `loraship runtime prepare` (`make runtime` in a checkout does); "
    "--server djl with a DJL Serving install needs none of it"
)


class RuntimeMissing(LorashipError):
    pass


def model_name(model_dir: str | Path) -> str:
    """The name DJL Serving gives a model dir in URLs: the folder name, each non-word character ``_``."""
    return re.sub(r"(\W|^_)", "_", Path(model_dir).resolve().name, flags=re.ASCII)  # Java's \W is ASCII-only


class ServerChoice(Settings):
    """Which server runs a model dir: the flags of serve, perf and demo."""

    server: Literal["auto", "djl", "host"] = "auto"
    """djl: the real DJL Serving ModelServer from --djl-home; host: loraship's host over DJL's Python
    engine (make runtime); auto: djl when a DJL home is configured"""
    djl_home: Annotated[Path | None, Flag(metavar="DIR")] = None
    """a DJL Serving distribution folder (lib/, conf/); default $DJL_SERVING_HOME"""
    threads: Annotated[int | None, Flag(metavar="N")] = None
    """torch threads (OMP_NUM_THREADS) of the Python worker (default: $OMP_NUM_THREADS, else 1, DJL's
    policy; README, Threads)"""

    def runtime(self) -> dict:
        """``Server`` keyword arguments, the choice checked before anything starts."""
        kind, home = resolve_server(self.server, self.djl_home)
        return {"kind": kind, "djl_home": home, "threads": self.threads}


def resolve_server(kind: str = "auto", djl_home: str | Path | None = None) -> tuple[str, Path | None]:
    """``(server, djl_home)`` for a ``--server`` choice; raise RuntimeMissing when it cannot run."""
    if kind not in SERVERS:
        raise RuntimeMissing(f"--server must be one of {', '.join(SERVERS)}, got {kind!r}")
    home = djl_home or os.environ.get("DJL_SERVING_HOME") or None
    if kind == "auto":
        kind = "djl" if home else "host"
    if kind == "host":
        return "host", None
    if home is None:
        raise RuntimeMissing(
            "--server djl needs a DJL Serving distribution folder: pass --djl-home DIR or set "
            "DJL_SERVING_HOME (in this repository: ../shared/djl-serving)"
        )
    home = Path(home).expanduser().resolve()
    if not any((home / "lib").glob("serving-*.jar")):
        raise RuntimeMissing(f"{home} is not a DJL Serving distribution folder: no lib/serving-*.jar in it")
    return "djl", home


def prepare_runtime(dest: Path | None = None, *, force: bool = False) -> Path:
    """Fetch DJL's Python engine from Maven Central into ``DEST/djl`` and compile the host into
    ``DEST/host`` (default: ``runtime_dir()``); ``make runtime`` runs it; an installed wheel too.

    Both are built beside the destination and moved into place whole, so an interrupted run leaves
    the previous runtime (or none), never half of one.
    """
    dest = Path(dest or runtime_dir()).resolve()
    if not force and any((dest / "djl").glob("python-*.jar")) and (dest / "host" / "ai").is_dir():
        return dest
    from . import handler

    source = Path(handler.__file__).resolve().parent / "runtime"  # package data in a wheel too
    for tool in ("mvn", "javac"):
        if shutil.which(tool) is None:
            raise RuntimeMissing(f"`{tool}` is not on PATH: the host runtime needs Maven and a JDK (17 or newer)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".prepare-") as tmp:
        jars, classes = Path(tmp, "djl"), Path(tmp, "host")
        steps = [
            ["mvn", "-q", "-B", "-f", str(source / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={jars}"],
            ["javac", "-nowarn", "-d", str(classes), "-cp", f"{jars}/*",
             *sorted(str(p) for p in (source / "src").rglob("*.java"))],
        ]  # fmt: skip
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                output = (done.stdout + done.stderr).strip()[-2000:]
                raise RuntimeMissing(f"`{' '.join(cmd[:2])} ...` failed:\n{output}")
        for name, built in (("djl", jars), ("host", classes)):
            shutil.rmtree(dest / name, ignore_errors=True)
            built.rename(dest / name)
    return dest


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeMissing(
            "java was not found on PATH: install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
        )
    return java


def java_command(model_dir: Path, host: str, port: int, tmpdir: str | None = None) -> list[str]:
    """The host's java command line; raise RuntimeMissing naming what to install when something is absent."""
    java = _java()
    lib = runtime_dir()
    jars = sorted((lib / "djl").glob("*.jar"))
    if not any(j.name.startswith("python-") for j in jars):
        raise RuntimeMissing(f"DJL's Python engine jars are missing from {lib / 'djl'}: {_BUILD_IT}")
    if not (lib / "host" / "ai" / "loraship" / "host" / "DjlHost.class").is_file():
        raise RuntimeMissing(f"the compiled DJL host is missing from {lib / 'host'}: {_BUILD_IT}")
    classpath = os.pathsep.join([str(lib / "host"), str(lib / "djl" / "*")])
    # DJL names worker sockets /tmp/djl_sock.<19000+n> and kills "dangling" workers that hold
    # those names at start-up, so two servers on one host would kill each other's workers: each
    # server gets its own java.io.tmpdir.
    jvm = [f"-Djava.io.tmpdir={tmpdir}"] if tmpdir else []
    return [
        java,
        *jvm,
        "-cp",
        classpath,
        HOST_MAIN,
        "--model-dir",
        str(Path(model_dir).resolve()),
        "--host",
        host,
        "--port",
        str(port),
    ]


def has_nvidia_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def djl_command(djl_home: Path, state: Path, model_dir: Path, host: str, port: int) -> list[str]:
    """Write the server's config.properties under ``state`` and return its java command line."""
    home = state / "home"
    for sub in (home / "conf", home / "logs", state / "cache", state / "tmp"):
        sub.mkdir(parents=True, exist_ok=True)
    # LMI's config.properties (serving/docker/config.properties) on this host:port and model dir.
    (home / "conf" / "config.properties").write_text(
        f"inference_address=http://{host}:{port}\nmanagement_address=http://{host}:{port}\n"
        f"model_store={Path(model_dir).resolve()}\nload_models=ALL\n"
    )
    jvm = [*LMI_JAVA_OPTS, f"-Djava.io.tmpdir={state / 'tmp'}"]
    log4j = djl_home / "conf" / "log4j2.xml"
    if log4j.is_file():
        jvm.insert(0, f"-Dlog4j.configurationFile={log4j}")
    if not has_nvidia_gpu():
        # option.enable_lora makes DJL place the model on gpu(0); without a GPU its memory check refuses
        # to load. The worker then falls back to the CPU (generation.load_model).
        jvm.append("-Dskip_oom_check=true")
    # Later flags win, as in DJL's own start script.
    for var in ("JAVA_OPTS", "SERVING_OPTS", "SAGEMAKER_MODEL_SERVER_VMARGS"):
        jvm += os.environ.get(var, "").split()
    return [_java(), *jvm, "-cp", str(djl_home / "lib" / "*"), DJL_MAIN, "-f", str(home / "conf" / "config.properties")]


def server_env(extra: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """The server's environment. The worker's OMP_NUM_THREADS is ``threads`` when given, else the caller's
    OMP_NUM_THREADS, else ``DEFAULT_THREADS``."""
    env = dict(os.environ)
    env.update(
        {
            # The worker must run the interpreter that has this project's packages.
            "PYTHON_EXECUTABLE": sys.executable,
            "DJL_OFFLINE": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.setdefault("OMP_NUM_THREADS", str(DEFAULT_THREADS))
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running DJL Serving process (real DJL or the host); use as a context manager or call ``stop()``.

    ``kind`` is ``auto``, ``djl`` or ``host`` (see the module docstring); ``threads`` is the worker's
    OMP_NUM_THREADS (default: the caller's OMP_NUM_THREADS, else ``DEFAULT_THREADS``).
    """

    def __init__(
        self,
        model_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
        env: dict[str, str] | None = None,
        log_file=None,
        *,
        kind: str = "auto",
        djl_home: str | Path | None = None,
        threads: int | None = None,
    ):
        self.kind, home = resolve_server(kind, djl_home)
        self.model_dir = Path(model_dir)
        self.model_name = model_name(model_dir)
        self.host, self.port = host, port
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        self.tmpdir = tempfile.mkdtemp(prefix="djl-")  # short: unix socket paths max out at 107 bytes
        environment = server_env(env, threads)
        if self.kind == "djl":
            cmd = djl_command(home, Path(self.tmpdir), self.model_dir, host, port)
            for key, value in LMI_ENV.items():
                environment.setdefault(key, value)
            environment.update({"MODEL_SERVER_HOME": f"{self.tmpdir}/home", "DJL_CACHE_DIR": f"{self.tmpdir}/cache"})
            cwd = f"{self.tmpdir}/home"
        else:
            cmd, cwd = java_command(self.model_dir, host, port, self.tmpdir), None
        # A new session: stop() can signal the JVM and the Python workers it started as one group.
        self.proc = subprocess.Popen(
            cmd,
            env=environment,
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file is not None else None,
            start_new_session=True,
        )
        self.started = time.monotonic()

    @property
    def name(self) -> str:
        return "DJL Serving" if self.kind == "djl" else "the loraship host"

    def wait_ready(self, timeout: float = 300) -> float:
        """Block until ``GET /ping`` answers 200; return the seconds it took."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer /ping within {timeout:.0f}s")

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
