"""Microbenchmarks of the handler's hot paths that need no model forward.

Run with ``make bench`` (pytest-benchmark); ``make test`` skips them (``--benchmark-skip`` in setup.cfg).
Each benchmark also checks its result, so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import json

import pytest

from loraship.handler.generation import prepare_tokenizer
from loraship.handler.lmi import line as _line
from loraship.handler.pipelines.instruction import END_KEY, extract_response, format_prompt
from loraship.handler.requests import parse_body
from loraship.training.data import FAQ_CSV, read_qa_csv

QUESTIONS = [row["instruction"] for row in read_qa_csv(FAQ_CSV)]
BODY = json.dumps(
    {
        "inputs": QUESTIONS[0],
        "adapters": "faq",
        "stream": False,
        "parameters": {
            "max_new_tokens": 64,
            "min_new_tokens": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "stop": ["###"],
            "details": True,
        },
    }
).encode()
GENERATED = (
    "Amazon SageMaker is a fully managed service to prepare data and build, train, and deploy machine "
    "learning models.\n\n" + END_KEY + "\n\nBelow is an instruction that describes a task."
)


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_models import train_tokenizer

    tok = train_tokenizer()
    prepare_tokenizer(tok)  # left padding, EOS as pad: what the served generator uses
    return tok


def test_parse_body(benchmark):
    req = benchmark(parse_body, BODY, max_cap=512, default_max=64)
    assert req.items == [QUESTIONS[0]] and req.adapters == ["faq"] and req.params.max_new_tokens == 64


def test_format_prompt(benchmark):
    prompt = benchmark(format_prompt, QUESTIONS[1])
    assert prompt.endswith("### Response:\n")


@pytest.mark.parametrize("batch", [1, 8])
def test_batch_collation_and_padding(benchmark, tokenizer, batch):
    prompts = [format_prompt(q) for q in QUESTIONS[:batch]]
    enc = benchmark(tokenizer, prompts, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[0] == batch


def test_extract_response(benchmark):
    text, stopped = benchmark(extract_response, GENERATED)
    assert stopped and text.endswith("learning models.")


def test_stream_token_line(benchmark):
    line = benchmark(_line, {"token": {"id": 2, "text": " SageMaker", "log_prob": -0.5}})
    assert line == b'{"token": {"id": 2, "text": " SageMaker", "log_prob": -0.5}}\n'


def test_stream_final_line(benchmark):
    final = {
        "generated_text": GENERATED,
        "details": {"generated_tokens": 64, "prompt_tokens": 37, "finish_reason": "length", "adapter": "faq"},
    }
    line = benchmark(_line, final)
    assert json.loads(line) == final
