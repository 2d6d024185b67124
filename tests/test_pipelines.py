import pytest

from loraship.handler.errors import ConfigError
from loraship.handler.pipelines import get_pipeline, known_pipelines
from loraship.handler.pipelines.instruction import (
    END_KEY,
    INSTRUCTION_KEY,
    INTRO_BLURB,
    RESPONSE_KEY,
    InstructionTextGenerationPipeline,
    extract_response,
    format_prompt,
    format_response,
)


def test_prompt_is_the_dolly_template():
    prompt = format_prompt("  What is SageMaker? ")
    assert prompt == f"{INTRO_BLURB}\n\n{INSTRUCTION_KEY}\nWhat is SageMaker?\n\n{RESPONSE_KEY}\n"


def test_prompt_with_context_puts_it_before_the_response():
    prompt = format_prompt("Summarise", "Some text")
    assert prompt.index("Input:\nSome text") < prompt.index(RESPONSE_KEY)
    assert format_prompt("Summarise", "   ") == format_prompt("Summarise")


def test_training_example_is_prompt_plus_response_and_end_marker():
    assert (format_prompt("Q") + format_response(" A ")).endswith(f"{RESPONSE_KEY}\nA\n\n{END_KEY}")


@pytest.mark.parametrize(
    "generated, expected, stopped",
    [
        ("Answer.\n\n### End\nrubbish", "Answer.", True),
        ("Answer.", "Answer.", False),
        ("  Answer.\n### Instruction:\nnext", "Answer.", True),
        ("### End", "", True),
    ],
)
def test_extract_response(generated, expected, stopped):
    assert extract_response(generated) == (expected, stopped)


def test_pipeline_registry_knows_instruction_and_lists_names_on_error():
    assert get_pipeline("instruction") is InstructionTextGenerationPipeline
    assert "instruction" in known_pipelines()
    with pytest.raises(ConfigError, match="known pipelines: .*instruction"):
        get_pipeline("nope")


def test_pipeline_by_module_path():
    assert (
        get_pipeline("loraship.handler.pipelines.instruction:InstructionTextGenerationPipeline")
        is InstructionTextGenerationPipeline
    )
    with pytest.raises(ConfigError, match="cannot load pipeline"):
        get_pipeline("loraship.handler.pipelines.instruction:Missing")


@pytest.mark.parametrize("spec", ["loraship.handler.pipelines.instruction:format_prompt", "json:JSONDecoder"])
def test_the_registry_serves_only_pipelines(spec):
    """A function, or a class that is not a Pipeline, would fail on the first request: refuse it at load."""
    with pytest.raises(ConfigError, match="not a subclass of handler.pipelines.Pipeline"):
        get_pipeline(spec)
    from loraship.handler.pipelines import register_pipeline

    with pytest.raises(ConfigError, match="not a subclass"):
        register_pipeline("plain")(type("Plain", (), {}))


def test_instruction_pipeline_round_trip():
    p = InstructionTextGenerationPipeline()
    assert p.decode_request("Hi") == format_prompt("Hi")
    assert p.encode_response(" Hello there.\n\n### End") == "Hello there."


def test_text_pipeline_passes_prompt_through():
    from loraship.handler.pipelines import TextGenerationPipeline

    p = TextGenerationPipeline()
    assert p.decode_request("Once upon") == "Once upon" and p.encode_response(" time") == " time"


class _ChatTok:
    chat_template = "x"
    eos_token = "<|im_end|>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, continue_final_message=False):
        if continue_final_message and messages[-1]["role"] != "assistant":
            raise ValueError("continue_final_message is set but the final message\ndoes not appear")
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_chat_pipeline_uses_the_tokenizer_template():
    from loraship.handler.errors import BadRequest
    from loraship.handler.pipelines import ChatPipeline

    p = ChatPipeline()
    p.setup(_ChatTok(), {})
    assert p.stop_sequences == ("<|im_end|>",)
    # LMI's inputs: one user message
    assert p.decode_request("hi") == "<user>hi<assistant>"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert p.chat_prompt(chat) == "<system>Be brief.<user>hi<assistant>"
    assert p.chat_prompt(chat, add_generation_prompt=False) == "<system>Be brief.<user>hi"
    scored = chat + [{"role": "assistant", "content": "Hello"}]
    assert p.chat_prompt(scored, add_generation_prompt=False, continue_final_message=True) == (
        "<system>Be brief.<user>hi<assistant>Hello"
    )
    with pytest.raises(BadRequest) as err:  # the template's refusal, on one line
        p.chat_prompt(chat, add_generation_prompt=False, continue_final_message=True)
    assert err.value.field == "messages" and "\n" not in err.value.message
    with pytest.raises(BadRequest):
        p.decode_request(["hi"])


def test_instruction_pipeline_maps_the_last_user_message_to_its_template():
    from loraship.handler.errors import BadRequest
    from loraship.handler.pipelines.instruction import InstructionTextGenerationPipeline, format_prompt

    p = InstructionTextGenerationPipeline()
    turns = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "What is SageMaker?"},
    ]
    assert p.chat_prompt(turns) == format_prompt("What is SageMaker?") == p.decode_request("What is SageMaker?")
    assert p.chat_prompt(turns, add_generation_prompt=False) == format_prompt("What is SageMaker?")
    # system messages are the template's context (Input:), as the evaluation tasks send one
    with_context = [{"role": "system", "content": "AWS docs"}, *turns]
    assert p.chat_prompt(with_context) == format_prompt("What is SageMaker?", "AWS docs")
    # continue_final_message: the assistant's start follows the response marker
    scored = with_context + [{"role": "assistant", "content": "A service"}]
    assert p.chat_prompt(scored, add_generation_prompt=False, continue_final_message=True) == (
        format_prompt("What is SageMaker?", "AWS docs") + "A service"
    )
    with pytest.raises(BadRequest, match="user message"):
        p.chat_prompt([{"role": "system", "content": "x"}])
    with pytest.raises(BadRequest, match="before the final assistant message"):
        p.chat_prompt([{"role": "assistant", "content": "x"}], continue_final_message=True)


def test_chat_pipeline_needs_a_chat_template():
    from loraship.handler.pipelines import ChatPipeline

    tok = _ChatTok()
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        ChatPipeline().setup(tok, {})
