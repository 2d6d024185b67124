"""The wheel installs one namespace, ``loraship``, and the installed code writes where the user is.

The wheel is built from this checkout and installed (without dependencies) into a fresh venv; the
dependencies come from the test venv through a path entry, which does not run its ``.pth`` files,
so the checkout's editable install stays out of the way.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools' build/ would otherwise land in the checkout and keep stale modules.
    source = tmp_path_factory.mktemp("source") / "loraship"
    skip = shutil.ignore_patterns(".git", ".venv", "lib", "runs", "build", "*.egg-info", "__pycache__", ".*cache")
    shutil.copytree(ROOT, source, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("loraship-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A venv's python with only the wheel installed; the dependencies are the test venv's."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return python


def test_the_wheel_holds_only_the_loraship_namespace_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"loraship", wheel.name.split("-py")[0] + ".dist-info"}
    for data in (
        "loraship/training/data/amazon_sagemaker_faqs.csv",
        "loraship/training/configs/sagemaker_faqs.yaml",
        "loraship/evaluation/policies/default.yaml",
        "loraship/evaluation/tasks/utils.py",
        "loraship/handler/runtime/pom.xml",
    ):
        assert data in names
    # setup.cfg lists the packages one by one (package_dir maps folders into the namespace): none is missing.
    folders = {"loraship": ROOT / "loraship", "loraship/handler": ROOT / "handler"}
    folders |= {"loraship/training": ROOT / "training", "loraship/evaluation": ROOT / "evaluation"}
    sources = {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for prefix, folder in folders.items()
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sources - set(names) == set()
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "loraship = loraship.cli:main" in entry_points


def test_installed_code_finds_its_data_and_no_checkout(installed, tmp_path):
    code = """
import importlib.util, loraship
from loraship.core import paths
from loraship.evaluation.gate import DEFAULT_POLICY
from loraship.training.data import FAQ_CSV
from loraship.training.config import CONFIGS_DIR
assert "site-packages" in loraship.__file__, loraship.__file__
assert paths.source_checkout() is None
assert paths.runtime_dir() == paths.cache_dir() / "runtime"
assert FAQ_CSV.is_file() and DEFAULT_POLICY.is_file() and (CONFIGS_DIR / "sagemaker_faqs.yaml").is_file()
assert [n for n in ("handler", "training", "evaluation") if importlib.util.find_spec(n)] == []
"""
    subprocess.run([installed, "-c", code], cwd=tmp_path, check=True)
    help_text = subprocess.run(
        [installed.parent / "loraship", "--help"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert "demo" in help_text


def test_installed_demo_writes_its_runs_under_the_current_directory(installed, tmp_path):
    """The real run_demo of the installed wheel, stopped at its first step (the lifecycle itself runs in
    `make demo`)."""
    code = """
import sys
import loraship.demo as demo

def stop(self):
    with self.step("1/9 prepare"):
        raise RuntimeError("stopped by the test")

demo.Demo.main = stop
sys.exit(demo.run_demo())
"""
    proc = subprocess.run([installed, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "report.md").is_file()
    site = Path(installed.parent.parent)
    assert not list(site.rglob("runs")), "nothing is written beside the installed code"


def test_installed_runtime_prepare_fills_the_cache(installed, tmp_path):
    """An installed wheel builds the host's runtime from its package data (Maven Central and javac, as
    `make runtime`, which runs the same command, does for a checkout)."""
    env = {**os.environ, "LORASHIP_CACHE": str(tmp_path / "cache")}
    env.pop("LORASHIP_RUNTIME", None)
    done = subprocess.run(
        [installed.parent / "loraship", "runtime", "prepare"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    runtime = tmp_path / "cache" / "runtime"
    assert done.stdout.strip() == str(runtime)
    assert list((runtime / "djl").glob("python-*.jar"))
    assert (runtime / "host" / "ai" / "loraship" / "host" / "DjlHost.class").is_file()
    assert not list(runtime.glob(".prepare-*")), "the build folder is gone"
