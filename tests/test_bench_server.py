"""``loraship bench`` against both servers (real DJL Serving and the host) on the tiny model, with one
adapter beside the base: what it reads from /models and the adapter API must work on the one users run."""

from __future__ import annotations

import json

import pytest
from servers import KINDS, server_args

from loraship.build import build_model_dir
from loraship.cli import main
from loraship.runtime import Server, free_port

pytestmark = pytest.mark.server


def tiny_adapter(model_dir, out):
    """A random LoRA adapter for the tiny GPT-NeoX (non-zero B, so it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["query_key_value"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    peft.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_bench_against_the_real_server(kind, tiny_neox, tmp_path):
    adapter = tiny_adapter(tiny_neox, tmp_path / "adapter")
    model_dir = build_model_dir(
        str(tiny_neox), tmp_path / "md", {"tiny": adapter}, batch_size=2, max_batch_delay=20, max_new_tokens=16
    )
    with (
        open(tmp_path / "server.log", "w+") as log,
        Server(model_dir, port=free_port(), log_file=log, **server_args(kind)) as srv,
    ):
        try:
            srv.wait_ready(timeout=240)
        except Exception:
            log.seek(0)
            print(log.read()[-5000:])
            raise
        out = tmp_path / "sweep"
        code = main(
            [
                "bench",
                "--url",
                srv.url,
                "--out",
                str(out),
                "--concurrency",
                "1,2",
                "--requests",
                "4",
                "--max-new-tokens",
                "4",
                "--adapters",
                "tiny,__base__",
                "--warmup",
                "1",
            ]
        )
        stream_out = tmp_path / "stream"
        stream_code = main(
            [
                "bench",
                "--url",
                srv.url,
                "--out",
                str(stream_out),
                "--concurrency",
                "1",
                "--requests",
                "2",
                "--max-new-tokens",
                "4",
                "--stream",
                "--warmup",
                "0",
                "--no-cold-probe",
            ]
        )
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    assert [lv["label"] for lv in result["levels"]] == ["concurrency=1", "concurrency=2"]
    for lv in result["levels"]:
        assert lv["ok"] == 4 and lv["status_counts"] == {"200": 4}, lv["error_examples"]
        assert set(lv["adapters"]) == {"tiny", "__base__"} and "tiny" in lv["adapter_cost"]
        assert lv["output_tokens_per_s"] > 0 and lv["latency"]["e2e_s"]["p50"] > 0
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    measured = [r for r in records if r["phase"] == "measure"]
    assert all(r["output_tokens"] == 4 and r["input_tokens"] > 0 for r in measured)  # min_new_tokens = max
    server = result["server"]
    summary = server["model_summary"]
    assert summary["modelName"] == srv.model_name and summary["batchSize"] == 2 and summary["adapters"] == ["tiny"]
    assert summary["workers"] == 1 and summary["modelDir"].rstrip("/") == str(model_dir.resolve())
    assert server["metrics"]["available"] is False and server["metrics"]["status"] == 400  # Prometheus is off
    assert "batch_size=2" in server["serving_properties"]
    assert set(result["cold_warm"]) == {"tiny", "__base__"}
    for name in ("summary.md", "throughput.png", "latency.png", "e2e_cdf.png"):
        assert (out / name).stat().st_size > 0

    assert stream_code == 0
    stream = json.loads((stream_out / "bench.json").read_text())["levels"][0]
    assert stream["ok"] == 2 and stream["latency"]["ttft_s"]["n"] == 2
    assert stream["latency"]["ttft_s"]["p50"] <= stream["latency"]["e2e_s"]["p50"]
    assert (stream_out / "ttft_cdf.png").is_file()
