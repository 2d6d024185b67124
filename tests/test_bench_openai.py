"""``loraship bench --api openai-chat|openai-completions`` against real OpenAI-compatible servers.

Two servers, each started here: Hugging Face's ``transformers serve`` (FastAPI; OpenAI's chat completions and
completions, streamed as server-sent events; it loads whichever model a request names, so two tiny models stand
for the base model and an adapter: ``--adapters`` become the requests' ``model``), and loraship's own handler
(``loraship serve``, the host), which serves chat completions on ``/v1/chat/completions`` once the handler's
OpenAI chat completions are merged (branch wt-chat). The handler's test needs that merge: before it, the host
answers 404 and the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from test_bench import bench, level
from tiny_models import save_tiny_model

from loraship.peer import stop
from loraship.runtime import free_port

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_model(folder: Path, seed: int) -> str:
    """A tiny random llama whose tokenizer has a chat template (chat completions need one)."""
    from transformers import AutoTokenizer

    save_tiny_model(folder, "llama", seed=seed)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("openai-models")
    return chat_model(root / "base", 0), chat_model(root / "other", 1)


@pytest.fixture(scope="module")
def transformers_serve(tmp_path_factory):
    """``transformers serve`` on a free port (its own process group, stopped at the end); yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("transformers-serve") / "serve.log"
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--model-timeout", "3600"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)  # the peer's own stop: its process group, SIGTERM then SIGKILL


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_openai_chat_against_transformers_serve(tmp_path, transformers_serve, models, stream):
    base, other = models
    code, result, records = bench(
        transformers_serve, tmp_path / "out", "--api", "openai-chat", "--model", base, "--adapters",
        f"__base__,{other}", "--concurrency", "2", "--requests", "6", "--max-new-tokens", "5", "--tokenizer", base,
        *(["--stream"] if stream else []),
    )  # fmt: skip
    assert code == 0
    lv = level(result, "concurrency=2")
    assert lv["status_counts"] == {"200": 6}, lv["error_examples"]
    assert set(lv["adapters"]) == {"__base__", other} and lv["adapters"][other]["ok"] == 3
    # Each adapter went as the request's model: the server loaded both.
    listed = {m["id"] for m in requests.get(transformers_serve + "/v1/models", timeout=10).json()["data"]}
    assert {base, other} <= listed
    assert result["target"]["api"] == "openai-chat" and result["target"]["url"].endswith("/v1/chat/completions")
    assert result["target"]["model"] == base
    measured = [r for r in records if r["phase"] == "measure"]
    for r in measured:
        assert r["tokens_from"] == "server" and 1 <= r["output_tokens"] <= 5  # usage, from the server
        assert r["input_tokens"] > r["counted_prompt_tokens"] > 0  # the chat template adds to the prompt
        assert r["finish_reason"] in ("length", "stop")
    if stream:
        assert lv["latency"]["ttft_s"]["n"] == 6
        assert all(r["chunks"] >= 1 and r["ttft"] <= r["e2e"] for r in measured)
        assert all(len(r["itl"]) == r["chunks"] - 1 for r in measured)
    else:
        assert lv["latency"]["ttft_s"]["n"] == 0 and all(r["chunks"] == 0 for r in measured)


def test_openai_completions_against_transformers_serve(tmp_path, transformers_serve, models):
    base, _ = models
    code, result, records = bench(
        transformers_serve, tmp_path / "out", "--api", "openai-completions", "--model", base, "--rate", "4",
        "--requests", "4", "--max-new-tokens", "4", "--stream",
    )  # fmt: skip
    assert code == 0
    lv = level(result, "rate=4")
    assert lv["ok"] == 4 and lv["latency"]["ttft_s"]["n"] == 4
    assert result["target"]["url"].endswith("/v1/completions")
    assert lv["output_tokens"] == sum(r["output_tokens"] for r in records if r["phase"] == "measure") > 0


def test_a_field_the_server_refuses_is_counted_with_its_message(tmp_path, transformers_serve, models):
    """transformers serve refuses fields it does not know (vLLM's min_tokens among them) with 422."""
    base, _ = models
    code, result, _ = bench(
        transformers_serve, tmp_path / "out", "--api", "openai-chat", "--model", base, "--min-tokens",
        "--concurrency", "1", "--requests", "2", "--max-new-tokens", "4",
    )  # fmt: skip
    assert code == 1  # nothing succeeded
    lv = level(result, "concurrency=1")
    assert lv["status_counts"] == {"422": 2}
    assert "min_tokens" in lv["error_examples"]["422"]


def test_openai_chat_against_the_handler(tmp_path, tmp_path_factory, tiny_neox):
    """The handler's own chat completions (needs the handler's OpenAI chat completions, branch wt-chat): the same
    workload in LMI's schema and OpenAI's gives the same token counts, the adapter named by ``model``."""
    from servers import start_server
    from test_bench_server import tiny_adapter

    from loraship.build import build_model_dir

    adapter = tiny_adapter(tiny_neox, tmp_path / "adapter")
    model_dir = build_model_dir(str(tiny_neox), tmp_path / "md", {"tiny": adapter}, max_new_tokens=16)
    srv = start_server(model_dir, tmp_path_factory, "host")
    try:
        runs = {}
        for api in ("lmi", "openai-chat"):
            code, runs[api], _ = bench(
                srv.url, tmp_path / api, "--api", api, "--adapters", "tiny,__base__", "--concurrency", "2",
                "--requests", "4", "--max-new-tokens", "4", "--stream", *(["--min-tokens"] if api != "lmi" else []),
            )  # fmt: skip
            assert code == 0
    finally:
        srv.stop()
    chat = level(runs["openai-chat"], "concurrency=2")
    assert chat["status_counts"] == {"200": 4}, chat["error_examples"]
    assert set(chat["adapters"]) == {"tiny", "__base__"}
    assert chat["latency"]["ttft_s"]["n"] == 4
    # min_tokens = max_tokens: every reply has its 4 tokens, as LMI's min_new_tokens gives.
    assert chat["output_tokens"] == level(runs["lmi"], "concurrency=2")["output_tokens"] == 16
    assert runs["openai-chat"]["target"]["url"].endswith("/v1/chat/completions")
    assert json.dumps(runs["openai-chat"]["config"]["api"]) == '"openai-chat"'
