"""The layering of the code: no import cycles, aecore free of Prefect, one job per module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aecore", "flows")


def modules() -> dict[str, Path]:
    """Every module of the project's packages: ``{"aecore.io": path}``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere, in functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # a submodule, or a name of the module itself
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules() else node.module)
    return {name for name in names if name in modules()}


def graph() -> dict[str, set[str]]:
    return {name: imports(path) - {name} for name, path in modules().items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_through_others() -> None:
    found = cycle(graph())
    assert found is None, " -> ".join(found or [])


def test_aecore_never_imports_flows_or_prefect_and_mlflow_only_in_pyfunc() -> None:
    for name, path in modules().items():
        if not name.startswith("aecore"):
            continue
        tree = ast.parse(path.read_text())
        roots = {
            (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert not roots & {"flows", "prefect", "prefect_dask"}, name
        if name != "aecore.pyfunc":
            assert "mlflow" not in roots, name


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_names_its_one_job_in_its_first_line(name: str) -> None:
    docstring = ast.get_docstring(ast.parse(modules()[name].read_text()))
    assert docstring, f"{name} has no docstring"
    first = docstring.splitlines()[0]
    assert first.endswith(".") and len(first) <= 100, f"{name}: {first!r}"


def test_the_registered_model_loads_without_prefect() -> None:
    """A model server imports aecore.pyfunc: Prefect must not come with it."""
    code = "import sys, aecore.pyfunc; print(sorted(m for m in sys.modules if 'prefect' in m))"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


STAGE_MODULES = {
    "ingest": "aecore.schema",
    "normalize": "aecore.normalize",
    "train": "aecore.train",
    "evaluate": "aecore.evaluate",
    "export": "aecore.export",
}


def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    """``start`` and every project module it imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += edges.get(name, ())
    return seen


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_each_dvc_stage_depends_on_exactly_the_code_it_runs(stage: str) -> None:
    """Editing a module a stage imports makes `dvc status` show the stage as changed."""
    import yaml

    edges = graph()
    needed = {
        f"{name.replace('.', '/')}.py"
        for name in closure(STAGE_MODULES[stage], edges)
        if name != "aecore"  # the package's __init__: its version string
    }
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    assert {dep for dep in deps if dep.startswith("aecore/")} == needed


def test_the_public_api_loads_on_demand():
    """``import aecore`` stays instant; each public name is the function it names."""
    code = "import sys, aecore; print('torch' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"
    import aecore
    from aecore.export import read_latents

    assert aecore.read_latents is read_latents
    assert all(getattr(aecore, name) is not None for name in aecore.__all__)
    assert (ROOT / "aecore" / "py.typed").exists()
