"""The import graph keeps its layers: what ships in a model dir (handler/) at the bottom, then a small
shared core (loraship.hashing, models, paths, aws), then training/ and evaluation/, then the CLI and
orchestration (the rest of loraship/), which nothing below imports. Every import counts, also the ones
inside functions."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"loraship", "loraship.hashing", "loraship.models", "loraship.paths", "loraship.aws"}
PROJECT = ("loraship", "handler", "training", "evaluation")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, relative imports resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
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
        found |= {n for n in names if n.split(".")[0] in PROJECT}
    return found


def modules(top: str) -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for p in sorted((ROOT / top).rglob("*.py"))}


def known(names: set[str], existing: set[str]) -> set[str]:
    """Only names that are modules or packages (not functions imported from them)."""
    return {n for n in names if n in existing}


EXISTING = {module_name(p) for top in PROJECT for p in (ROOT / top).rglob("*.py")}


@pytest.mark.parametrize("top", ["handler"])
def test_what_ships_in_a_model_dir_imports_nothing_else_of_the_project(top):
    bad = {m: sorted(i for i in imps if not i.startswith("handler")) for m, imps in modules(top).items()}
    assert {m: i for m, i in bad.items() if i} == {}


def test_the_shared_core_imports_only_the_core():
    for name in CORE:
        path = ROOT / (name.replace(".", "/") + ".py") if name != "loraship" else ROOT / "loraship/__init__.py"
        assert known(project_imports(path), EXISTING) <= CORE, name


@pytest.mark.parametrize("top", ["training", "evaluation"])
def test_training_and_evaluation_import_only_handler_the_core_and_the_data_format(top):
    allowed_prefixes = ("handler", top)
    bad = {}
    for m, imps in modules(top).items():
        wrong = sorted(
            i
            for i in known(imps, EXISTING)
            if not i.startswith(allowed_prefixes)
            and i not in CORE
            # evaluation scores the split training wrote: it reads it with training's own reader
            and not (top == "evaluation" and i == "training.data")
        )
        if wrong:
            bad[m] = wrong
    assert bad == {}


def test_nothing_below_the_cli_imports_it():
    below = {**modules("handler"), **modules("training"), **modules("evaluation")}
    below |= {m: project_imports(ROOT / (m.replace(".", "/") + ".py")) for m in CORE - {"loraship"}}
    offenders = {
        m: sorted(i for i in imps if i == "loraship.cli" or i.startswith("loraship.cli.")) for m, imps in below.items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}
    within = modules("loraship")
    assert {m for m, imps in within.items() if "loraship.cli" in imps and m != "loraship.cli"} == set()
