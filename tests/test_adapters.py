"""Adapters in the handler, in-process: selection, mixed batches, validation, LRU eviction."""

import shutil

import pytest
import torch
from harness import batch_input, init_input, read_output, request_input
from tiny_models import save_random_adapter

PROMPT = "What is Amazon SageMaker?"


@pytest.fixture(scope="module")
def adapters(tiny_neox, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": save_random_adapter(tiny_neox, root / "a", seed=1),
        "beta": save_random_adapter(tiny_neox, root / "b", seed=2),
        "gamma": save_random_adapter(tiny_neox, root / "c", seed=3),
        "llama": save_random_adapter(tiny_llama, root / "llama", seed=4),
        "root": root,
    }


def make_service(tiny_neox, adapters, **options):
    from loraship.handler.service import HandlerService

    svc = HandlerService()
    props = {
        "model_id": str(tiny_neox),
        "model_dir": str(tiny_neox),
        "device_id": "-1",
        "adapter_roots": str(adapters["root"]),
        **options,
    }
    svc.handle(init_input(props))
    return svc


def register(svc, name, src, **content):
    from djl_python import Input

    inp = Input()
    inp.properties = {"handler": "register_adapter", "name": name, "src": str(src)}
    for k, v in content.items():
        inp.content.add(k, v.encode())
    return read_output(svc.adapter_call(inp, "register"))


def ask(svc, adapter, tokens=10, prompt=PROMPT):
    code, body = read_output(
        svc.handle(request_input({"inputs": prompt, "adapters": adapter, "parameters": {"max_new_tokens": tokens}}))
    )
    assert code == 200, body
    return body["generated_text"]


def peft_reference(base, adapter_dir, prompt, tokens):
    """What plain transformers + peft generate for the same prompt (greedy)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.handler.pipelines.instruction import extract_response, format_prompt

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    enc = tok(format_prompt(prompt), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return extract_response(tok.decode(new))[0]


def test_two_adapters_differ_and_match_peft(tiny_neox, adapters):
    svc = make_service(tiny_neox, adapters)
    assert register(svc, "alpha", adapters["alpha"])[0] == 200
    assert register(svc, "beta", adapters["beta"])[0] == 200
    out_a, out_b, out_base = ask(svc, "alpha"), ask(svc, "beta"), ask(svc, "__base__")
    assert len({out_a, out_b, out_base}) == 3
    assert out_a == peft_reference(tiny_neox, adapters["alpha"], PROMPT, 10)
    assert out_b == peft_reference(tiny_neox, adapters["beta"], PROMPT, 10)
    # Base requests must not pick up peft's active adapter.
    assert out_base == peft_reference(tiny_neox, None, PROMPT, 10)


def test_mixed_batch_equals_one_by_one(tiny_neox, adapters):
    svc = make_service(tiny_neox, adapters)
    register(svc, "alpha", adapters["alpha"])
    register(svc, "beta", adapters["beta"])
    plan = [
        ("alpha", "What is SageMaker?"),
        ("__base__", "How much does it cost?"),
        ("beta", "Which regions?"),
        ("alpha", "How do I start?"),
    ]
    alone = [ask(svc, name, 8, prompt) for name, prompt in plan]
    reqs = [request_input({"inputs": p, "adapters": n, "parameters": {"max_new_tokens": 8}}) for n, p in plan]
    bodies = read_output(svc.handle(batch_input(reqs)), len(reqs))
    assert [b["generated_text"] for b in bodies] == alone
    # The same through one request with a list of inputs and adapters.
    code, body = read_output(
        svc.handle(
            request_input(
                {"inputs": [p for _, p in plan], "adapters": [n for n, _ in plan], "parameters": {"max_new_tokens": 8}}
            )
        )
    )
    assert [b["generated_text"] for b in body] == alone


def test_selection_by_query_and_sagemaker_header(tiny_neox, adapters):
    svc = make_service(tiny_neox, adapters)
    register(svc, "alpha", adapters["alpha"])
    expected = ask(svc, "alpha")
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 10}}
    assert read_output(svc.handle(request_input(body, query={"adapter": "alpha"})))[1]["generated_text"] == expected
    hdr = {"X-Amzn-SageMaker-Adapter-Identifier": "alpha"}
    assert read_output(svc.handle(request_input(body, headers=hdr)))[1]["generated_text"] == expected


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("outside_roots", 400, "outside the allowed roots"),
        ("symlink_escape", 400, "outside the allowed roots"),
        ("dotdot", 400, "outside the allowed roots"),
        ("pickle_only", 400, "allow_pickle_adapters"),
        ("other_base", 400, "does not have"),
        ("corrupt", 400, "unreadable"),
        ("missing", 400, "not a folder"),
        ("bad_name", 400, "invalid adapter name"),
        ("peft_prefix", 400, "prefix 'lora_'"),
        ("duplicate", 409, "already registered"),
    ],
)
def test_bad_registrations_are_refused_and_others_keep_serving(tiny_neox, adapters, tmp_path, case, status, message):
    svc = make_service(tiny_neox, adapters)
    register(svc, "alpha", adapters["alpha"])
    before = ask(svc, "alpha")
    root = adapters["root"]
    name, src = "x", None
    if case == "outside_roots":
        src = shutil.copytree(adapters["beta"], tmp_path / "elsewhere")
    elif case == "symlink_escape":
        target = shutil.copytree(adapters["beta"], tmp_path / "real")
        src = root / f"link-{case}"
        if not src.exists():
            src.symlink_to(target)
    elif case == "dotdot":
        src = str(root / ".." / tmp_path.name)
    elif case == "pickle_only":
        src = root / "pickle"
        if not src.exists():
            shutil.copytree(adapters["beta"], src)
            (src / "adapter_model.safetensors").rename(src / "adapter_model.bin")
    elif case == "other_base":
        src = adapters["llama"]
    elif case == "corrupt":
        src = root / "corrupt"
        if not src.exists():
            shutil.copytree(adapters["beta"], src)
            (src / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    elif case == "missing":
        src = root / "nope"
    elif case == "bad_name":
        name, src = "../evil", adapters["beta"]
    elif case == "peft_prefix":
        name, src = "lora", adapters["beta"]
    elif case == "duplicate":
        name, src = "alpha", adapters["beta"]
    code, body = register(svc, name, src)
    assert code == status and message in body["error"], body
    assert ask(svc, "alpha") == before
    code, body = read_output(svc.handle(request_input({"inputs": PROMPT, "adapters": "x"})))
    assert code == 404 and "known adapters: alpha" in body["error"]


def test_pickle_adapter_allowed_when_enabled(tiny_neox, adapters):
    import torch as t
    from safetensors.torch import load_file

    src = adapters["root"] / "pickle-ok"
    if not src.exists():
        shutil.copytree(adapters["beta"], src)
        t.save(load_file(src / "adapter_model.safetensors"), src / "adapter_model.bin")
        (src / "adapter_model.safetensors").unlink()
    svc = make_service(tiny_neox, adapters, allow_pickle_adapters="true")
    assert register(svc, "p", src)[0] == 200
    assert ask(svc, "p") == peft_reference(tiny_neox, adapters["beta"], PROMPT, 10)


def test_lru_eviction_reloads_on_demand_and_keeps_pinned(tiny_neox, adapters):
    svc = make_service(tiny_neox, adapters, max_adapters="2")
    register(svc, "alpha", adapters["alpha"], pin="true")
    register(svc, "beta", adapters["beta"])
    out_b = ask(svc, "beta")
    register(svc, "gamma", adapters["gamma"])
    assert set(svc.adapters.loaded) == {"alpha", "gamma"}  # b was least recently used and not pinned
    assert ask(svc, "beta") == out_b  # reloaded from disk
    assert "alpha" in svc.adapters.loaded and len(svc.adapters.loaded) == 2
    assert svc.adapters.names() == ["alpha", "beta", "gamma"]


def test_update_and_unregister(tiny_neox, adapters):
    from djl_python import Input

    svc = make_service(tiny_neox, adapters)
    register(svc, "alpha", adapters["alpha"])
    inp = Input()
    inp.properties = {"name": "alpha", "src": str(adapters["beta"])}
    assert read_output(svc.adapter_call(inp, "update"))[0] == 200
    assert ask(svc, "alpha") == peft_reference(tiny_neox, adapters["beta"], PROMPT, 10)
    inp.properties = {"name": "alpha"}
    assert read_output(svc.adapter_call(inp, "unregister"))[0] == 200
    assert read_output(svc.adapter_call(inp, "unregister"))[0] == 404
    code, _ = read_output(svc.handle(request_input({"inputs": PROMPT, "adapters": "alpha"})))
    assert code == 404
