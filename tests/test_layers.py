"""The import graph keeps its layers, from the bottom up:

1. ``loraship.handler`` (handler/): what ships in a model dir; imports nothing else of the project;
2. ``loraship.core``: content hashes, model resolution, paths, AWS clients; imports only itself;
3. ``loraship.training`` (training/) and ``loraship.evaluation`` (evaluation/): the handler and the core;
4. the CLI and orchestration (the rest of ``loraship``), which nothing below imports.

Every import counts, also the ones inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where each package of the installed namespace lives in the checkout (setup.cfg's package_dir).
FOLDERS = {
    "loraship": ROOT / "loraship",
    "loraship.handler": ROOT / "handler",
    "loraship.training": ROOT / "training",
    "loraship.evaluation": ROOT / "evaluation",
}
#: model.py in a model dir: there the handler package is the top-level ``handler``.
MODEL_DIR_ENTRY = "loraship.handler.djl_entry"


def _files() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[0] in ("handler", "training", "evaluation") and package == "loraship":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


FILES = _files()


def project_imports(name: str) -> set[str]:
    """The project modules ``name`` imports (relative imports resolved), as installed names."""
    path = FILES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            # "from pkg import sub" may name a submodule: count both.
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        if name == MODEL_DIR_ENTRY:
            names = ["loraship." + n if n.split(".")[0] == "handler" else n for n in names]
        found |= {n for n in names if n in FILES}
    return found


def layer(name: str) -> int:
    for number, prefix in ((1, "loraship.handler"), (2, "loraship.core"), (3, "loraship.training")):
        if name == prefix or name.startswith(prefix + "."):
            return number
    if name == "loraship.evaluation" or name.startswith("loraship.evaluation."):
        return 3
    return 2 if name == "loraship" else 4  # the package's __init__ holds only __version__


def test_the_layers_are_what_the_tree_shows():
    assert layer("loraship.handler.service") == 1 and layer("loraship.core.paths") == 2
    assert layer("loraship.evaluation.bench.run") == 3 and layer("loraship.cli") == 4
    assert {n for n in FILES if layer(n) == 4} >= {"loraship.cli", "loraship.rollout", "loraship.package"}


@pytest.mark.parametrize("name", sorted(n for n in FILES if layer(n) < 4))
def test_no_module_imports_a_layer_above_it(name):
    above = sorted(i for i in project_imports(name) if layer(i) > layer(name))
    assert above == [], f"{name} imports {above}"


def test_what_ships_in_a_model_dir_imports_nothing_else_of_the_project():
    bad = {n: sorted(i for i in project_imports(n) if layer(i) != 1) for n in FILES if layer(n) == 1}
    assert {n: i for n, i in bad.items() if i} == {}


def test_training_and_evaluation_use_each_other_only_for_the_data_format():
    """Evaluation scores the split training wrote, with training's own reader; nothing else crosses."""
    crossing = {
        (n, i)
        for n in FILES
        if layer(n) == 3
        for i in project_imports(n)
        if layer(i) == 3 and i.split(".")[1] != n.split(".")[1]
    }
    assert crossing <= {
        ("loraship.evaluation.score", "loraship.training.data"),
        ("loraship.evaluation.bench.workload", "loraship.training.data"),
    }


def _in_cli(name: str) -> bool:
    return name == "loraship.cli" or name.startswith("loraship.cli.")


def test_nothing_imports_the_cli():
    assert {n for n in FILES if not _in_cli(n) and any(_in_cli(i) for i in project_imports(n))} == set()


def test_the_checker_sees_relative_and_function_level_imports():
    assert "loraship.handler.service" in project_imports(MODEL_DIR_ENTRY)
    assert "loraship.training.data" in project_imports("loraship.evaluation.score")  # inside a function
    assert "loraship.core.paths" in project_imports("loraship.core.models")  # relative
