"""``loraship demo``: the workflow on the embedded default model, end to end, on this machine."""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from pathlib import Path

from training.data import read_qa_csv

from .build import build_model_dir
from .models import prepare_default
from .paths import REPO_ROOT, faq_csv
from .runtime import Server, free_port


def post_json(url: str, body: dict, timeout: float = 300) -> tuple[int, dict, float]:
    """POST JSON; return (status, parsed body, seconds)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return status, json.loads(raw or b"{}"), time.perf_counter() - start


def _step(name: str) -> None:
    print(f"\n== {name}", flush=True)


def run_demo(port: int = 0, questions: int = 3) -> int:
    _step("prepare the embedded default model")
    model = prepare_default()
    print(model)

    rows = read_qa_csv(faq_csv())[:questions]
    with tempfile.TemporaryDirectory(prefix="loraship-demo-") as tmp:
        _step("build a DJL Serving model dir")
        model_dir = build_model_dir("default", Path(tmp) / "model")
        print(model_dir)

        _step("serve it with DJL Serving")
        run_dir = REPO_ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "server.log", "w")
        print(f"server log: {run_dir / 'server.log'}")
        server = Server(model_dir, port=port or free_port(), log_file=log)
        with server, log:
            took = server.wait_ready()
            print(f"ready at {server.url} in {took:.1f}s")

            _step(f"ask {len(rows)} SageMaker FAQ questions")
            for row in rows:
                status, body, seconds = post_json(server.url + "/invocations", {
                    "inputs": row["instruction"], "parameters": {"max_new_tokens": 64, "details": True}})
                if status != 200:
                    print(f"request failed with HTTP {status}: {body}")
                    return 1
                tokens = body["details"]["generated_tokens"]
                print(f"\nQ: {row['instruction']}\nA: {body['generated_text']}\n"
                      f"   ({seconds:.2f}s, {tokens} tokens, finish: {body['details']['finish_reason']})")
        _step("server stopped")
    return 0
