"""A built model dir driven by DJL's own offline tester, ``djl_python.test_model``: its CLI and its Python API.

The tester differs from DJL Serving: one call carries the init properties and the first request, the body
has no key, and serving.properties (``batch_size`` included) is copied into every request.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import missing

from loraship.core.paths import runtime_dir

REQUEST = {"inputs": "What is Amazon SageMaker?", "parameters": {"max_new_tokens": 8}}


@pytest.fixture(scope="module", params=["engine", "djl-serving"])
def djl_jar(request):
    """djl_python from DJL's Python engine jar (``make runtime``, 0.34.0) and from the DJL Serving install
    (``$DJL_SERVING_HOME/lib``, 0.36.0 as in LMI); a missing one fails."""
    if request.param == "engine":
        folder = runtime_dir() / "djl"
    else:
        folder = Path(os.environ.get("DJL_SERVING_HOME") or "/nonexistent") / "lib"
    jars = sorted(folder.glob("python-*.jar"))
    if not jars:
        missing(f"a DJL python engine jar under {folder} (run `make setup`; set DJL_SERVING_HOME)")
    return jars[-1]


@pytest.fixture(scope="module")
def expected_text(tiny_neox, tmp_path_factory) -> str:
    """What the handler generates in-process for REQUEST (greedy, so deterministic)."""
    # harness and the handler import djl_python: only once djl_jar has found it.
    from harness import init_input, read_output, request_input

    from loraship.handler.service import HandlerService

    svc = HandlerService()
    svc.handle(
        init_input(
            {
                "model_id": str(tiny_neox),
                "model_dir": str(tmp_path_factory.mktemp("md")),
                "device_id": "-1",
                "max_new_tokens": "16",
            }
        )
    )
    code, body = read_output(svc.handle(request_input(REQUEST)))
    assert code == 200
    return body["generated_text"]


def build(tiny_neox, out, batch_size=1):
    from loraship.build import build_model_dir

    return build_model_dir(str(tiny_neox), out, max_new_tokens=16, batch_size=batch_size)


def test_cli_prints_generated_text(djl_jar, tiny_neox, tmp_path, expected_text):
    md = build(tiny_neox, tmp_path / "md")
    env = {**os.environ, "PYTHONPATH": f"{djl_jar}{os.pathsep}{md}", "HF_HUB_OFFLINE": "1"}
    # cwd is the model dir so that model.py imports the handler copy `loraship build` wrote there.
    cmd = [sys.executable, "-m", "djl_python.test_model", "--model-dir", str(md), "--input", json.dumps(REQUEST)]
    proc = subprocess.run(cmd, cwd=md, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "output: {" in proc.stdout, proc.stdout[-3000:]
    printed, _ = json.JSONDecoder().raw_decode(proc.stdout.split("output: ", 1)[1])
    assert printed["code"] == 200
    body = printed["content"].get("null")  # the body, added without a key; json.dumps prints None as "null"
    assert isinstance(body, dict), printed
    assert body["generated_text"] == expected_text


@pytest.fixture
def tester(djl_jar, tiny_neox, tmp_path, monkeypatch):
    """``make(batch_size)`` -> a ``TestHandler`` on a fresh model dir; undoes what TestHandler changes."""
    # tests/conftest.py put djl_jar on sys.path.
    monkeypatch.setattr(sys, "path", list(sys.path))  # TestHandler appends the model dir
    monkeypatch.chdir(tmp_path)  # and chdirs into it
    # djl_python 0.34 imports model.py as the module "model": each model dir needs a fresh one.
    monkeypatch.delitem(sys.modules, "model", raising=False)
    from djl_python.test_model import TestHandler

    def make(batch_size):
        sys.modules.pop("model", None)
        return TestHandler("model.py", str(build(tiny_neox, tmp_path / f"md{batch_size}", batch_size)))

    yield make
    sys.modules.pop("model", None)


def single_body(out):
    from djl_python.test_model import extract_output_as_string

    assert out is not None and out.code == 200
    return json.loads(extract_output_as_string(out))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_python_api_single_requests(tester, batch_size, expected_text):
    from djl_python.test_model import create_json_request

    handler = tester(batch_size)
    # The first call also initialises; the second is served by the loaded model.
    for _ in range(2):
        assert single_body(handler.inference(create_json_request(REQUEST)))["generated_text"] == expected_text


def test_python_api_batch(tester, expected_text):
    from harness import read_output

    handler = tester(4)
    other = {"inputs": "Short?", "parameters": {"max_new_tokens": 8}}
    out = handler.inference_batch([other, REQUEST, other, REQUEST])
    bodies = read_output(out, 4)
    assert bodies[1]["generated_text"] == bodies[3]["generated_text"] == expected_text
    assert "generated_text" in bodies[0] and bodies[0] == bodies[2]
