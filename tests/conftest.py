import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # rel_support: shared by the server suites

from loraship.core.paths import runtime_dir  # noqa: E402

# djl_python is not on PyPI: import it straight from DJL's Python engine jar (a zip).
_jars = sorted((runtime_dir() / "djl").glob("python-*.jar"))
if _jars:
    sys.path.insert(0, str(_jars[-1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)


def pytest_terminal_summary(terminalreporter):
    """Figures the server suites measured (recovery times, counts), printed whatever the outcome."""
    from rel_support import FIGURES

    if FIGURES.values:
        terminalreporter.section("reliability figures")
        for key in sorted(k for k in FIGURES.values if not k.startswith("_")):
            terminalreporter.write_line(f"{key}: {FIGURES.values[key]}")


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo():
    """Each test module's compiled decode steps start from dynamo's empty cache: one compiled function serves
    every decoder in a process, up to dynamo's recompile limit (8), and a whole session builds more."""
    yield
    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()


@pytest.fixture(scope="session")
def djl_available():
    """The host's DJL runtime (``make runtime``); missing it fails."""
    from servers import server_args

    server_args("host")
    return True


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-neox"), "gpt_neox")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def gpu_base() -> str:
    """The base model for GPU checks: ``$LORASHIP_GPU_MODEL`` if set, else the embedded default.

    A machine without the default model's GGUF can point the variable at any HF folder (e.g.
    random weights in SmolLM2's shape, built from its config.json) so the kernels see real sizes.
    """
    from loraship.core.models import resolve_model

    return os.environ.get("LORASHIP_GPU_MODEL") or resolve_model("default")
