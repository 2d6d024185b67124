"""Security defaults: no remote code unless trust_remote_code is set, safetensors-only adapters, no
request text in the logs, loopback-only binding."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from rel_support import FIGURES, invoke, listening_addresses, raw_request, send

from loraship.build import build_model_dir
from loraship.cli import build_parser
from loraship.cli.flags import from_args
from loraship.cli.serving import ServeOptions
from loraship.runtime import Server

EVIL = """
import pathlib

pathlib.Path({sentinel!r}).write_text("remote code ran")

from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


class EvilConfig(GPTNeoXConfig):
    model_type = {model_type!r}


class EvilModel(GPTNeoXForCausalLM):
    config_class = EvilConfig
"""


def remote_code_model(tiny_neox, dest, model_type):
    """A model folder whose config.json maps the Auto classes to code in the folder (auto_map)."""
    shutil.copytree(tiny_neox, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(
        model_type=model_type,
        architectures=["EvilModel"],
        auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    )
    (dest / "config.json").write_text(json.dumps(cfg))
    sentinel = dest.parent / f"{dest.name}-code-ran"
    (dest / "evil.py").write_text(EVIL.format(sentinel=str(sentinel), model_type=model_type))
    return dest, sentinel


def load_in_handler(model, **options):
    from harness import init_input

    from loraship.handler.service import HandlerService

    svc = HandlerService()
    svc.handle(init_input({"model_id": str(model), "model_dir": str(model), "device_id": "-1", **options}))
    return svc


def test_remote_code_is_not_run_by_default(tiny_neox, tmp_path):
    # A model type transformers does not know: only its own code could load it, so loading is refused.
    model, sentinel = remote_code_model(tiny_neox, tmp_path / "custom", "loraship_evil")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_in_handler(model)
    assert not sentinel.exists()
    # A known type with an auto_map: transformers' own class is used, the folder's code is not.
    model, sentinel = remote_code_model(tiny_neox, tmp_path / "known", "gpt_neox")
    svc = load_in_handler(model)
    assert type(svc.generator.model).__name__ == "GPTNeoXForCausalLM"
    assert not sentinel.exists()
    # And what `loraship build` writes says so explicitly.
    md = build_model_dir(str(model), tmp_path / "md")
    assert "option.trust_remote_code=false" in (md / "serving.properties").read_text().splitlines()
    FIGURES.add("remote-code models refused or not executed", 2)


def test_remote_code_runs_when_trusted(tiny_neox, tmp_path):
    """The control for the test above: the same folder does run its code once trust_remote_code=true."""
    model, sentinel = remote_code_model(tiny_neox, tmp_path / "custom", "loraship_evil")
    script = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "import conftest\n"  # puts djl_python on the path, as for the suite
        "from test_security import load_in_handler\n"
        f"load_in_handler({str(model)!r}, trust_remote_code='true')\n"
    )
    here = os.path.dirname(__file__)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}  # not the user's cache
    subprocess.run(
        [sys.executable, "-c", script, os.path.dirname(here), here],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sentinel.read_text() == "remote code ran"


def test_adapters_are_safetensors_only_by_default():
    from loraship.handler.properties import ServingOptions

    opts = ServingOptions.from_properties({"model_id": "x"})
    assert opts.allow_pickle_adapters is False and opts.trust_remote_code is False
    # Refusal of a pickle-only adapter over HTTP (and that its pickle never ran): test_adapter_api.py.


@pytest.mark.server
def test_no_request_text_in_the_logs(healthy):
    url, marker = healthy.url, f"zq{uuid.uuid4().hex}"
    ok = {"inputs": f"Tell me about {marker}", "parameters": {"max_new_tokens": 4}}
    sent = [
        invoke(url, ok, headers={"X-Note": marker}, query=f"note={marker}"),
        invoke(url, {**ok, "stream": True}),
        invoke(url, {**ok, "adapters": marker}),  # 404: unknown adapter
        invoke(url, ok, headers={"X-Amzn-SageMaker-Adapter-Identifier": marker}),
        invoke(url, ok, query=f"adapter={marker}"),
        invoke(url, {**ok, marker: 1}),  # 400: unknown field
        invoke(url, {**ok, "parameters": {"stop": [marker] * 99}}),  # 400: too many stop strings
        invoke(url, {"inputs": marker + " word" * 900}),  # 400: over the context
        invoke(url, f'{{"inputs": "{marker}'.encode() + b"\xff"),  # 400: invalid UTF-8
        invoke(url, ok, headers={"handler": marker}),  # 400: reserved header
        invoke(url, ok, headers={"X-Amzn-SageMaker-Custom-Attributes": f"batch_1={marker}"}),
        send(url, "GET", f"/predictions/{marker}"),
        send(url, "POST", f"/models/{healthy.model_name}/adapters?name=x&src=/{marker}"),
        raw_request(url, f"POST /invocations?{marker}=%zz HTTP/1.1\nHost: x\nContent-Length: 2", b"{}"),
    ]
    assert sent[0].status == 200 and sent[1].status == 200
    assert all(r.status < 500 for r in sent), [(r.status, r.text) for r in sent]
    invoke(url, {"inputs": "flush", "parameters": {"max_new_tokens": 1}})
    time.sleep(1)  # the worker's output reaches the log through the JVM's reader threads
    log = healthy.log_text()
    assert "djl_python_engine started" in log, "the log has no Python worker output: this check proves nothing"
    assert marker not in log, [line for line in log.splitlines() if marker in line][:5]
    FIGURES.add("requests checked for prompt text in the log", len(sent))


@pytest.mark.server
def test_binds_to_loopback_unless_told_otherwise(healthy):
    assert inspect.signature(Server).parameters["host"].default == "127.0.0.1"
    serve = from_args(ServeOptions, build_parser().parse_args(["serve", "md"]))
    assert serve.host == "127.0.0.1"
    port = int(healthy.url.rsplit(":", 1)[1])
    assert listening_addresses(port) in ({"127.0.0.1"}, {"::ffff:127.0.0.1"})
    # The java host's own default (no --host at all) is checked by test_faults.py's full restart.
