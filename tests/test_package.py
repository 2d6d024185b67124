"""``loraship package``: the SageMaker model artifact, checked before it is written and reproducible."""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from loraship.build import build_model_dir
from loraship.cli import main
from loraship.package import (
    PackageError,
    adapter_sha256,
    handler_options,
    merge_properties,
    package_model_dir,
    read_archive,
    read_properties,
)

ROOT = Path(__file__).resolve().parents[1]
GPU_PROFILE = ROOT / "docker" / "serving.gpu.properties"


@pytest.fixture(scope="session")
def tiny_adapter(tiny_neox, tmp_path_factory) -> Path:
    """A random LoRA adapter for the tiny model, saved the way training saves one (with a checkpoint)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_neox), LoraConfig(r=2, init_lora_weights=False, task_type="CAUSAL_LM")
    )
    folder = tmp_path_factory.mktemp("adapter") / "faq"
    model.save_pretrained(folder)
    (folder / "checkpoint-000010").mkdir()
    (folder / "checkpoint-000010" / "optimizer.pt").write_bytes(b"not shipped")
    return folder


@pytest.fixture
def model_dir(tiny_neox, tiny_adapter, tmp_path) -> Path:
    md = build_model_dir(str(tiny_neox), tmp_path / "md", {"faq": tiny_adapter}, max_new_tokens=16)
    # Left-overs a model dir picks up when it is served or edited: never shipped.
    (md / "handler" / "__pycache__").mkdir()
    (md / "handler" / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"\0")
    (md / "adapters" / "faq" / ".cache").mkdir()
    (md / "adapters" / "faq" / ".cache" / "x").write_text("cache")
    return md


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_archive_has_the_sagemaker_layout_and_a_manifest(model_dir, tmp_path):
    art = package_model_dir(model_dir, tmp_path / "model.tar.gz", include_model=True)
    entries = members(art.path)
    assert {n.split("/")[0] for n in entries} == {
        "serving.properties",
        "model.py",
        "handler",
        "requirements.txt",
        "adapters",
        "model",
        "manifest.json",
    }
    assert not [
        n
        for n in entries
        if "__pycache__" in n
        or n.endswith(".pyc")
        or "checkpoint-" in n
        or "/.cache" in n
        or n.endswith("optimizer.pt")
    ]
    assert {
        "adapters/faq/adapter_config.json",
        "adapters/faq/adapter_model.safetensors",
        "model/config.json",
        "handler/service.py",
        "handler/kernels/row_linear.cpp",
    } <= set(entries)
    for m in entries.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644)
    head = art.path.read_bytes()[:10]
    assert head[4:8] == b"\0\0\0\0" and not head[3] & 0x08  # gzip: no mtime, no file name
    contents = read_archive(art.path)  # every file checked against manifest.json
    assert contents.sha256 == art.sha256 == hashlib.sha256(art.path.read_bytes()).hexdigest()
    assert set(art.manifest["files"]) == set(entries) - {"manifest.json"} - {n for n, m in entries.items() if m.isdir()}
    requirements = dict(line.split("==") for line in (model_dir / "requirements.txt").read_text().split())
    assert set(requirements) == {"transformers", "peft", "accelerate", "safetensors", "ninja"}


def test_same_inputs_give_the_same_sha256(model_dir, tmp_path):
    a = package_model_dir(model_dir, tmp_path / "a.tar.gz", include_model=True)
    for path in model_dir.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    os.chmod(model_dir / "model.py", 0o600)
    b = package_model_dir(model_dir, tmp_path / "b.tar.gz", include_model=True)
    assert a.sha256 == b.sha256 and a.path.read_bytes() == b.path.read_bytes()
    (model_dir / "adapters" / "faq" / "README.md").write_text("changed")
    assert package_model_dir(model_dir, tmp_path / "c.tar.gz", include_model=True).sha256 != a.sha256


def test_adapter_sha256_is_the_same_for_the_training_folder_the_model_dir_and_the_archive(
    model_dir, tiny_adapter, tmp_path
):
    art = package_model_dir(model_dir, tmp_path / "m.tar.gz", include_model=True)
    expected = adapter_sha256(tiny_adapter)
    assert adapter_sha256(model_dir / "adapters" / "faq") == expected
    assert read_archive(art.path).adapters == {"faq": expected} == art.manifest["adapters"]
    weights = model_dir / "adapters" / "faq" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert adapter_sha256(model_dir / "adapters" / "faq") != expected


def test_a_local_model_outside_the_model_dir_is_refused_with_the_way_out(model_dir, tmp_path):
    out = tmp_path / "model.tar.gz"
    with pytest.raises(PackageError) as err:
        package_model_dir(model_dir, out)
    assert "outside the model dir" in str(err.value) and "--include-model" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".model.tar.gz*"))


def test_included_model_is_served_from_the_extracted_archive(model_dir, tmp_path):
    """The archive alone loads in the handler (as in /opt/ml/model) and answers a request."""
    from harness import init_input, read_output, request_input

    from loraship.handler.service import HandlerService

    art = package_model_dir(model_dir, tmp_path / "model.tar.gz", include_model=True)
    extracted = tmp_path / "opt-ml-model"
    with tarfile.open(art.path, "r:gz") as tar:
        tar.extractall(extracted, filter="data")
    props = read_properties((extracted / "serving.properties").read_text())
    assert props["option.model_id"] == "model"
    opts = handler_options(props, extracted)
    assert opts.resolve(opts.model_id) == str(extracted / "model")
    svc = HandlerService()
    svc.handle(
        init_input(
            {
                **{k[7:]: v for k, v in props.items() if k.startswith("option.")},
                "model_dir": str(extracted),
                "device_id": "-1",
            }
        )
    )
    assert svc.adapters.names() == ["faq"]
    code, body = read_output(
        svc.handle(
            request_input(
                {"inputs": "What is Amazon SageMaker?", "parameters": {"max_new_tokens": 4}, "adapters": "faq"}
            )
        )
    )
    assert code == 200 and isinstance(body["generated_text"], str)


def test_a_hub_model_id_is_kept(tiny_adapter, tmp_path):
    md = build_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "md", {"faq": tiny_adapter})
    art = package_model_dir(md, tmp_path / "m.tar.gz")
    assert art.manifest["model_source"] == "hub"
    assert read_archive(art.path).properties["option.model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_build_gives_the_packed_adapters_modules_the_compiled_step_s_lora_slot(tiny_neox, tiny_adapter, tmp_path):
    props = read_properties(
        (build_model_dir(str(tiny_neox), tmp_path / "a", {"faq": tiny_adapter}) / "serving.properties").read_text()
    )
    assert props["option.lora_target_modules"] == "query_key_value"  # the adapter's own target_modules
    mine = build_model_dir(
        str(tiny_neox), tmp_path / "b", {"faq": tiny_adapter}, options={"lora_target_modules": "dense"}
    )
    assert read_properties((mine / "serving.properties").read_text())["option.lora_target_modules"] == "dense"
    regex = tmp_path / "regex-adapter"
    shutil.copytree(tiny_adapter, regex)
    cfg = json.loads((regex / "adapter_config.json").read_text())
    (regex / "adapter_config.json").write_text(json.dumps(cfg | {"target_modules": "all-linear"}))
    props = read_properties(
        (
            build_model_dir(str(tiny_neox), tmp_path / "c", {"faq": tiny_adapter, "x": regex}) / "serving.properties"
        ).read_text()
    )
    assert "option.lora_target_modules" not in props  # not a list: every linear layer keeps its slot


def _set(md, key, value):
    sp = md / "serving.properties"
    sp.write_text(merge_properties(sp.read_text(), {key: value}))


BROKEN = {
    "bad dtype": (lambda md: _set(md, "option.dtype", "float8"), "option.dtype: must be one of"),
    "no entry point": (lambda md: (md / "model.py").unlink(), "option.entryPoint=model.py is not a file"),
    "entry point without handle": (
        lambda md: (md / "model.py").write_text("import handler\n"),
        "no module-level handle",
    ),
    "entry point does not compile": (lambda md: (md / "model.py").write_text("def handle(:\n"), "does not compile"),
    "no handler package": (lambda md: shutil.rmtree(md / "handler"), "has no handler/ folder"),
    "adapter without weights": (
        lambda md: (md / "adapters" / "faq" / "adapter_model.safetensors").unlink(),
        "adapters/faq: adapter source",
    ),
    "adapter without config": (
        lambda md: (md / "adapters" / "faq" / "adapter_config.json").unlink(),
        "has no adapter_config.json",
    ),
    "unpinned requirements": (
        lambda md: (md / "requirements.txt").write_text("transformers\npeft==0.1\n"),
        "must pin exact versions (name==version): transformers",
    ),
    "other engine": (lambda md: _set(md, "engine", "MPI"), "engine=MPI"),
    "unknown pipeline": (lambda md: _set(md, "option.pipeline", "nope"), "option.pipeline=nope is unknown"),
    "model folder without config": (
        lambda md: _set(md, "option.model_id", str(md / "handler")),
        "is not a model folder with config.json",
    ),
    "checkpoint outside": (lambda md: _set(md, "option.adapter_checkpoint", "/tmp"), "outside the model dir"),
}


def test_a_pickle_adapter_ships_only_when_the_model_dir_allows_it(model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    faq = model_dir / "adapters" / "faq"
    torch.save(load_file(faq / "adapter_model.safetensors"), faq / "adapter_model.bin")
    (faq / "adapter_model.safetensors").unlink()
    with pytest.raises(PackageError, match="allow_pickle_adapters"):
        package_model_dir(model_dir, tmp_path / "refused.tar.gz", include_model=True)
    _set(model_dir, "option.allow_pickle_adapters", "true")
    art = package_model_dir(model_dir, tmp_path / "model.tar.gz", include_model=True)
    assert "adapters/faq/adapter_model.bin" in read_archive(art.path).digests


def test_the_entry_point_must_match_the_batching_mode(tiny_neox, tiny_adapter, tmp_path):
    """Continuous batching runs DJL's async mode, which awaits an async handle; static mode calls a plain one."""
    md = build_model_dir(str(tiny_neox), tmp_path / "md", {"faq": tiny_adapter}, batching="continuous")
    package_model_dir(md, tmp_path / "ok.tar.gz", include_model=True)
    _set(md, "option.async_mode", "false")
    with pytest.raises(PackageError, match="its handle is async, but option.async_mode is not true"):
        package_model_dir(md, tmp_path / "refused.tar.gz", include_model=True)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_model_dir_that_would_not_load_is_refused(case, model_dir, tmp_path):
    breaks, message = BROKEN[case]
    breaks(model_dir)
    out = tmp_path / "model.tar.gz"
    with pytest.raises(PackageError) as err:
        package_model_dir(model_dir, out, include_model=True)
    assert message in str(err.value)
    assert not out.exists()


def test_every_problem_is_reported_at_once(model_dir):
    (model_dir / "requirements.txt").write_text("peft\n")
    (model_dir / "adapters" / "faq" / "adapter_model.safetensors").unlink()
    with pytest.raises(PackageError) as err:
        package_model_dir(model_dir, None)
    assert (
        "requirements.txt" in str(err.value)
        and "adapters/faq" in str(err.value)
        and "--include-model" in str(err.value)
    )


def test_a_failed_write_leaves_no_file_and_keeps_the_old_archive(model_dir, tmp_path, monkeypatch):
    import loraship.package.write as write

    out = tmp_path / "model.tar.gz"
    first = package_model_dir(model_dir, out, include_model=True)
    before = out.read_bytes()
    calls = []
    real = write._tarinfo

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "_tarinfo", failing)
    with pytest.raises(OSError):
        package_model_dir(model_dir, out, include_model=True, overwrite=True)
    assert out.read_bytes() == before and read_archive(out).sha256 == first.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["md", "model.tar.gz"]


def test_out_is_never_replaced_silently_nor_written_into_the_model_dir(model_dir, tmp_path):
    out = tmp_path / "model.tar.gz"
    out.write_text("keep")
    with pytest.raises(PackageError, match="--overwrite"):
        package_model_dir(model_dir, out, include_model=True)
    assert out.read_text() == "keep"
    with pytest.raises(PackageError, match="inside the model dir"):
        package_model_dir(model_dir, model_dir / "model.tar.gz", include_model=True)


def test_a_tampered_archive_fails_its_manifest(model_dir, tmp_path):
    art = package_model_dir(model_dir, tmp_path / "model.tar.gz", include_model=True)
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(art.path, "r:gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name == "adapters/faq/adapter_config.json":
                data = data.replace(b'"r": 2', b'"r": 3')
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(PackageError, match="adapters/faq/adapter_config.json does not match its manifest hash"):
        read_archive(tampered)


def test_gpu_profile_is_merged_into_the_archive_only(model_dir, tmp_path):
    original = (model_dir / "serving.properties").read_text()
    art = package_model_dir(model_dir, tmp_path / "gpu.tar.gz", include_model=True, profile=GPU_PROFILE)
    props = read_archive(art.path).properties
    assert props["option.dtype"] == "bfloat16"
    assert props["option.tensor_parallel_degree"] == "1"
    assert props["option.rolling_batch"] == "disable"
    assert props["option.model_id"] == "model" and props["batch_size"] == "1"
    assert (model_dir / "serving.properties").read_text() == original
    bad = tmp_path / "bad.properties"
    bad.write_text("option.quantize=int3\n")
    with pytest.raises(PackageError, match="option.quantize: must be one of"):
        package_model_dir(model_dir, None, include_model=True, profile=bad)


def test_properties_round_trip():
    text = "# c\nengine=Python\noption.model_id = /x\n! bang\noption.a: b\nlong=a\\\n  b\n"
    assert read_properties(text) == {"engine": "Python", "option.model_id": "/x", "option.a": "b", "long": "ab"}
    merged = merge_properties(text, {"option.model_id": "model", "option.new": "1"})
    assert read_properties(merged)["option.model_id"] == "model" and read_properties(merged)["option.new"] == "1"
    assert merged.startswith("# c\nengine=Python\noption.model_id=model\n")


def test_cli_package_and_check(model_dir, tmp_path, capsys):
    out = tmp_path / "model.tar.gz"
    assert main(["package", str(model_dir), "--check", "--include-model"]) == 0
    assert json.loads(capsys.readouterr().out)["artifact"] is None and not out.exists()
    assert main(["package", str(model_dir), "--out", str(out), "--include-model"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert summary["adapters"] == {"faq": adapter_sha256(model_dir / "adapters" / "faq")}
    assert main(["package", str(model_dir), "--out", str(tmp_path / "x.tar.gz")]) == 2
    assert "--include-model" in capsys.readouterr().err
    with gzip.open(out) as f:
        assert f.read(1)
