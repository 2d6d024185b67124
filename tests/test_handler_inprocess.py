"""The handler driven in-process with DJL's own Input/Output classes (no server)."""

import pytest
from harness import batch_input, init_input, read_output, request_input


@pytest.fixture(scope="module")
def service(tiny_neox):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    assert (
        svc.handle(
            init_input(
                {"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "device_id": "-1", "max_new_tokens": "64"}
            )
        )
        is None
    )
    return svc


def test_generates_response_without_template(service):
    code, body = read_output(
        service.handle(
            request_input(
                {"inputs": "What is Amazon SageMaker?", "parameters": {"max_new_tokens": 12, "details": True}}
            )
        )
    )
    assert code == 200
    assert isinstance(body["generated_text"], str)
    assert "### Instruction" not in body["generated_text"] and "### Response" not in body["generated_text"]
    assert 0 < body["details"]["generated_tokens"] <= 12
    assert body["details"]["finish_reason"] in ("eos", "stop", "length")


def test_list_input_gives_list_output(service):
    code, body = read_output(
        service.handle(request_input({"inputs": ["a?", "b?"], "parameters": {"max_new_tokens": 4}}))
    )
    assert code == 200 and isinstance(body, list) and len(body) == 2
    assert all("generated_text" in b for b in body)


def test_greedy_is_deterministic_and_batch_equals_single(service):
    body = {"inputs": "What is a notebook instance?", "parameters": {"max_new_tokens": 10}}
    _, one = read_output(service.handle(request_input(body)))
    other = {"inputs": "Short?", "parameters": {"max_new_tokens": 10}}
    bodies = read_output(service.handle(batch_input([request_input(other), request_input(body)])), 2)
    assert bodies[1] == one


def test_bad_request_alone_gets_its_status(service):
    code, body = read_output(service.handle(request_input({"inputs": "x", "parameters": {"max_new_tokens": 0}})))
    assert code == 400 and body["field"] == "parameters.max_new_tokens"


def test_bad_request_in_batch_does_not_fail_neighbours(service):
    good = request_input({"inputs": "What is SageMaker?", "parameters": {"max_new_tokens": 4}})
    bad = request_input(b"{broken")
    out = service.handle(batch_input([good, bad]))
    bodies = read_output(out, 2)
    assert out.code == 200
    assert "generated_text" in bodies[0]
    assert bodies[1]["code"] == 400 and bodies[1]["field"] == "body"


def test_prompt_too_long_names_both_counts(service):
    code, body = read_output(
        service.handle(request_input({"inputs": "word " * 600, "parameters": {"max_new_tokens": 64}}))
    )
    assert code == 400
    assert "max_new_tokens is 64" in body["error"] and "limit of 512" in body["error"]


def test_unknown_adapter_is_404_listing_known(service):
    code, body = read_output(service.handle(request_input({"inputs": "x", "adapters": "nope"})))
    assert code == 404 and "known adapters: none" in body["error"]


def test_stream_yields_json_lines_then_details(service):
    import json

    out = service.handle(
        request_input(
            {"inputs": "What is SageMaker?", "stream": True, "parameters": {"max_new_tokens": 8, "details": True}}
        )
    )
    assert out.properties["content-type"] == "application/jsonlines"
    lines = [json.loads(chunk) for chunk in out.stream_content]
    final = lines[-1]
    assert "generated_text" in final and final["details"]["generated_tokens"] <= 8
    assert "".join(line["token"]["text"] for line in lines).strip() == final["generated_text"]


def test_invalid_options_fail_init_listing_every_problem(tiny_neox):
    from loraship.handler.errors import ConfigError
    from loraship.handler.service import HandlerService

    with pytest.raises(ConfigError) as err:
        HandlerService().handle(
            init_input(
                {"model_id": str(tiny_neox), "dtype": "fp8", "max_new_tokens": "x", "trust_remote_code": "maybe"}
            )
        )
    msg = str(err.value)
    assert "option.dtype" in msg and "option.max_new_tokens" in msg and "option.trust_remote_code" in msg


def test_chat_pipeline_end_to_end_with_the_default_tokenizer(tmp_path):
    """A tiny random Llama with SmolLM2's real tokenizer and chat template, served as 'chat'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from loraship.core.models import prepare_default
    from loraship.handler.service import HandlerService

    tok = AutoTokenizer.from_pretrained(prepare_default())
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        eos_token_id=tok.eos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    svc = HandlerService()
    svc.handle(init_input({"model_id": str(tmp_path), "model_dir": str(tmp_path), "pipeline": "chat"}))
    chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "temperature": 0}
    code, body = read_output(svc.handle(request_input(chat)))
    assert code == 200 and body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 5
    # LMI's inputs is one user message through the same template
    code, lmi = read_output(svc.handle(request_input({"inputs": "Hello", "parameters": {"max_new_tokens": 5}})))
    assert code == 200 and lmi["generated_text"] == body["choices"][0]["message"]["content"]
    # a body with messages is OpenAI's chat request: LMI's parameters are not read there
    code, body = read_output(svc.handle(request_input({**chat, "parameters": {"max_new_tokens": 5}})))
    assert code == 400 and body["error"]["param"] == "parameters"


def test_a_data_query_parameter_does_not_replace_the_body(service):
    code, body = read_output(
        service.handle(
            request_input(
                {"inputs": "What is SageMaker?", "parameters": {"max_new_tokens": 3}}, query={"data": "{broken"}
            )
        )
    )
    assert code == 200 and "generated_text" in body
