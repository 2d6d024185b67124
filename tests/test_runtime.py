"""Choosing and starting a server: --server/--djl-home, DJL's model names, the real DJL command line,
and ``loraship serve --server djl`` end to end (register, list, update, delete, explained errors)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from servers import processes_left, server_args
from tiny_models import save_random_adapter

from loraship import runtime
from loraship.build import build_model_dir
from loraship.cli import main
from loraship.runtime import RuntimeMissing, djl_command, model_name, resolve_server, server_env


@pytest.fixture
def fake_home(tmp_path):
    """A folder with DJL Serving's layout (lib/serving-*.jar, conf/log4j2.xml); nothing in it runs."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "serving-0.36.0.jar").write_bytes(b"")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "log4j2.xml").write_text("<Configuration/>")
    return tmp_path


@pytest.mark.parametrize(
    "folder, name", [("md-ad", "md_ad"), ("md", "md"), ("_x.y", "_x_y"), ("modèle", "mod_le"), ("a b", "a_b")]
)
def test_model_names_follow_djl(folder, name):
    assert model_name(Path("/tmp") / folder) == name


def test_auto_picks_djl_only_with_a_home(fake_home, monkeypatch):
    monkeypatch.delenv("DJL_SERVING_HOME", raising=False)
    assert resolve_server("auto") == ("host", None)
    assert resolve_server("auto", fake_home) == ("djl", fake_home.resolve())
    monkeypatch.setenv("DJL_SERVING_HOME", str(fake_home))
    assert resolve_server("auto") == ("djl", fake_home.resolve())
    assert resolve_server("host") == ("host", None)


def test_djl_without_a_usable_home_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DJL_SERVING_HOME", raising=False)
    with pytest.raises(RuntimeMissing, match="--djl-home DIR or set DJL_SERVING_HOME"):
        resolve_server("djl")
    with pytest.raises(RuntimeMissing, match="no lib/serving-.*jar"):
        resolve_server("djl", tmp_path)
    with pytest.raises(RuntimeMissing, match="must be one of auto, djl, host"):
        resolve_server("lmi")
    md = tmp_path / "md"
    md.mkdir()
    assert main(["serve", str(md), "--server", "djl", "--djl-home", str(tmp_path)]) == 2
    assert "is not a DJL Serving distribution folder" in capsys.readouterr().err


def test_djl_command_is_lmis(fake_home, tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_OPTS", "-Dextra=1 -Xmx2g")
    monkeypatch.setattr(runtime, "has_nvidia_gpu", lambda: False)
    state, md = tmp_path / "state", tmp_path / "md"
    cmd = djl_command(fake_home, state, md, "127.0.0.1", 8123)
    assert cmd[-3:] == ["ai.djl.serving.ModelServer", "-f", str(state / "home" / "conf" / "config.properties")]
    assert cmd[cmd.index("-cp") + 1] == str(fake_home / "lib" / "*")
    jvm = cmd[1 : cmd.index("-cp")]
    assert jvm[0] == f"-Dlog4j.configurationFile={fake_home / 'conf' / 'log4j2.xml'}"
    assert jvm[1:5] == ["-Xmx1g", "-Xms1g", "-XX:+ExitOnOutOfMemoryError", "-Dai.djl.util.cuda.fork=true"]
    assert "-Dskip_oom_check=true" in jvm and f"-Djava.io.tmpdir={state / 'tmp'}" in jvm
    assert jvm[-2:] == ["-Dextra=1", "-Xmx2g"]  # after LMI's: later flags win
    conf = (state / "home" / "conf" / "config.properties").read_text().splitlines()
    assert conf == [
        "inference_address=http://127.0.0.1:8123",
        "management_address=http://127.0.0.1:8123",
        f"model_store={md.resolve()}",
        "load_models=ALL",
    ]
    monkeypatch.setattr(runtime, "has_nvidia_gpu", lambda: True)
    assert "-Dskip_oom_check=true" not in djl_command(fake_home, state, md, "127.0.0.1", 8123)


def test_thread_policy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert server_env()["OMP_NUM_THREADS"] == "1"  # DJL's policy
    assert server_env(threads=2)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert server_env()["OMP_NUM_THREADS"] == "3"  # the caller's environment, unless --threads says otherwise
    assert server_env(threads=2)["OMP_NUM_THREADS"] == "2"


@pytest.mark.server
def test_serve_command_on_real_djl(tiny_neox, tmp_path):
    """`loraship serve MD --server djl` with two adapters: adapter API round trip, then Ctrl-C."""
    home = server_args("djl")["djl_home"]
    root = tmp_path / "adapters"
    for seed, name in enumerate(("alpha", "beta", "gamma"), start=1):
        save_random_adapter(tiny_neox, root / name, seed=seed)
    md = build_model_dir(
        str(tiny_neox),
        tmp_path / "my-model",
        {"alpha": root / "alpha", "beta": root / "beta"},
        max_new_tokens=16,
        options={"adapter_roots": str(root)},
    )
    port = runtime.free_port()
    cmd = [
        sys.executable,
        "-m",
        "loraship.cli",
        "serve",
        str(md),
        "--server",
        "djl",
        "--djl-home",
        str(home),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "serve exited before it was ready:\n" + "".join(lines[-40:])
            lines.append(line)
            if line.startswith("loraship: DJL Serving serving"):
                break
        assert f"as model my_model at http://127.0.0.1:{port}" in lines[-1], lines[-1]
        url = f"http://127.0.0.1:{port}/models/my_model/adapters"
        assert {a["name"] for a in requests.get(url, timeout=30).json()["adapters"]} == {"alpha", "beta"}
        r = requests.post(url, params={"name": "gamma", "src": str(root / "gamma")}, timeout=60)
        assert r.json() == {"status": "Adapter gamma registered"}, r.text
        r = requests.post(f"{url}/gamma/update", params={"src": str(root / "beta")}, timeout=60)
        assert r.json() == {"status": "Adapter gamma updated"}, r.text
        r = requests.post(url, params={"name": "delta", "src": "/etc"}, timeout=60)
        assert r.status_code == 400 and "add its folder to option.adapter_roots" in r.json()["message"], r.text
        r = requests.delete(f"{url}/gamma", timeout=60)
        assert r.json() == {"status": "Adapter gamma unregistered"}, r.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
    # The JVM ran in a session of its own; its worker named the model dir on its command line.
    left = processes_left("-f", f"--model-dir {md}")
    assert left == [], f"processes left behind: {left}"
