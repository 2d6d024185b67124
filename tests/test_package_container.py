"""docker/: the LMI image, its compose file and the GPU profile, checked without a Docker engine."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from loraship.build import build_model_dir
from loraship.package import handler_options, merge_properties, read_properties
from loraship.rollout import LMI_ACCOUNT, LMI_TAG

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def ignored(rel: str, patterns: list[str]) -> bool:
    """BuildKit's .dockerignore rule: the last pattern that matches the path or a parent decides."""
    result = False
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            result = not negate
    return result


def test_dockerfile_starts_from_the_pinned_lmi_image():
    froms = [rest for word, rest in dockerfile_instructions() if word == "FROM"]
    assert len(froms) == 1
    image = froms[0]
    assert re.fullmatch(r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/djl-inference:[\w.-]+", image), image
    registry, _, tag = image.rpartition(":")
    assert tag == LMI_TAG and "latest" not in tag and registry.startswith(LMI_ACCOUNT)
    assert "deepspeed" not in image


def test_container_handler_is_byte_identical_to_the_model_dirs(tiny_neox, tmp_path):
    """What the Dockerfile copies from the repo is exactly the handler `loraship build` ships."""
    patterns = [
        ln.strip()
        for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    copied: dict[str, Path] = {}
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, dest = rest.split()
        for src in sources:
            base = ROOT / src
            for path in sorted(p for p in base.rglob("*") if p.is_file()):
                rel = path.relative_to(ROOT).as_posix()
                if not ignored(rel, patterns):
                    copied[Path(dest, path.relative_to(base)).as_posix()] = path
    md = build_model_dir(str(tiny_neox), tmp_path / "md")
    shipped = {
        Path("/opt/loraship/handler", p.relative_to(md / "handler")).as_posix(): p
        for p in (md / "handler").rglob("*")
        if p.is_file()
    }
    assert sorted(copied) == sorted(shipped)
    for dest, path in copied.items():
        assert path.read_bytes() == shipped[dest].read_bytes(), dest
    assert not any("/runtime/" in d or "__pycache__" in d for d in copied)


def test_requirements_come_from_the_model_dir():
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY" and rest.startswith("--from=model")]
    assert copies and copies[0].split()[1] == "requirements.txt"


def load_compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_a_model_dir_on_the_gpu_like_sagemaker():
    svc = load_compose()["services"]["lmi"]
    assert svc["gpus"] == "all"
    assert (DOCKER / svc["build"]["context"]).resolve() == ROOT
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert "MODEL_DIR" in svc["build"]["additional_contexts"]["model"]
    assert any(str(p).endswith(":8080") for p in svc["ports"])
    (volume,) = svc["volumes"]
    assert volume["target"] == "/opt/ml/model" and volume["read_only"] is True and "MODEL_DIR" in volume["source"]
    assert any("/ping" in part for part in svc["healthcheck"]["test"])


def _compose_client() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_client(), reason="no `docker compose` client on this machine")
def test_docker_compose_config_accepts_the_file(tmp_path):
    """Only where a Compose v2 client exists; the file's structure is checked above without one."""
    r = subprocess.run(
        [shutil.which("docker"), "compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={"MODEL_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("quantize", ["", "bitsandbytes8", "bitsandbytes4"])
def test_gpu_profile_is_valid_for_the_handler(quantize, tiny_neox, tmp_path):
    md = build_model_dir(str(tiny_neox), tmp_path / "md")
    profile = (DOCKER / "serving.gpu.properties").read_text()
    if quantize:
        assert f"#option.quantize={quantize}" in profile
        profile = profile.replace(f"#option.quantize={quantize}", f"option.quantize={quantize}")
    merged = read_properties(merge_properties((md / "serving.properties").read_text(), read_properties(profile)))
    opts = handler_options(merged, md)
    assert opts.dtype in ("bfloat16", "float16") and opts.quantize == quantize
    assert merged["option.rolling_batch"] == "disable"
    assert int(merged["option.tensor_parallel_degree"]) >= 1


def test_make_container_up_wraps_docker_compose(tmp_path):
    r = subprocess.run(
        ["make", "-n", "container-up", f"MODEL_DIR={tmp_path}"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert f'MODEL_DIR="{tmp_path}" docker compose -f docker/compose.yaml up --build' in r.stdout
    r = subprocess.run(["make", "container-up"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "usage: make container-up MODEL_DIR=" in r.stderr


def test_readme_documents_the_way_to_sagemaker():
    text = (DOCKER / "README.md").read_text()
    for needle in (
        "## To SageMaker",
        "djl-deepspeed",
        "0.22.1",
        LMI_TAG,
        "loraship package",
        "loraship rollout",
        "make container-up",
        "gate.json",
    ):
        assert needle in text, needle
