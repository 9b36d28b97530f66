"""The package's import graph (docs/DESIGN.md, "Layout"): no cycles, imports point down; citations stay inside.

Walks every module of ``mapo_verl`` (``patches/`` installs as ``mapo_verl.patches``) with ``ast``, so
nothing is imported. Every ``import`` counts, at module level or inside a function: a lazy import
breaks a cycle at run time but still ties the two modules together.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"mapo_verl": ROOT / "mapo_verl", "mapo_verl.patches": ROOT / "patches"}


def _module_files() -> dict[str, pathlib.Path]:
    modules = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in directory.rglob("*.py"):
            relative = path.relative_to(directory).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            name = ".".join([package, *parts])
            if package == "mapo_verl" and name.startswith("mapo_verl.patches"):
                continue
            modules[name] = path
    return modules


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported_names(name: str) -> set[str]:
    """Fully qualified names of everything ``name`` imports (modules, and ``module.attribute``)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _internal_edges(name: str) -> set[str]:
    """The MAPO modules ``name`` imports: ``from pkg import sub`` names the submodule, ``from pkg import x`` pkg."""
    targets = set()
    for imported in _imported_names(name):
        if imported in MODULES:
            targets.add(imported)
    # ``from mapo_verl.cpu import platform`` adds both mapo_verl.cpu and mapo_verl.cpu.platform above; keep the
    # package only when something else than a submodule is taken from it
    for imported in _imported_names(name):
        module, _, attribute = imported.rpartition(".")
        if module in MODULES and imported in MODULES and module in targets and attribute:
            others = {i for i in _imported_names(name) if i.rpartition(".")[0] == module and i not in MODULES}
            if not others and module != name:
                targets.discard(module)
    targets.discard(name)
    return targets


GRAPH = {name: _internal_edges(name) for name in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _layer(name: str) -> str:
    """The folder (sub-package) of a module, or the module itself for files at the package root."""
    parts = name.split(".")
    if len(parts) == 2 and not _is_package(name):
        return name
    return ".".join(parts[:2])


def test_graph_is_read():
    assert "mapo_verl.verl_ext.trainer" in GRAPH and "mapo_verl.patches.agent_loop" in GRAPH
    assert "mapo_verl.core.aggregation" in GRAPH["mapo_verl.core.attention_loss"]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_cycle():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_folder_cycle():
    folders: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        folders.setdefault(_layer(name), set()).update(_layer(t) for t in targets if _layer(t) != _layer(name))
    cycle = _cycle(folders)
    assert cycle is None, "import cycle between folders: " + " -> ".join(cycle)


def _imports_of(prefix: str) -> dict[str, set[str]]:
    return {name: _imported_names(name) for name in MODULES if name == prefix or name.startswith(prefix + ".")}


def _offending(prefix: str, forbidden) -> list[str]:
    return sorted(f"{name} imports {imported}" for name, names in _imports_of(prefix).items() for imported in names
                  if forbidden(imported))


def _top(imported: str) -> str:
    return imported.split(".")[0]


@pytest.mark.parametrize("layer", ["mapo_verl.core"])
def test_core_imports_only_core(layer):
    bad = _offending(layer, lambda i: _top(i) in ("verl", "megatron", "transformers", "ray", "tensordict")
                     or (_top(i) == "mapo_verl" and not i.startswith("mapo_verl.core")))
    assert not bad, bad


@pytest.mark.parametrize("layer", ["mapo_verl.hf", "mapo_verl.megatron"])
def test_framework_hooks_import_no_verl(layer):
    bad = _offending(layer, lambda i: _top(i) == "verl" or i.startswith(("mapo_verl.verl_ext", "mapo_verl.config",
                                                                          "mapo_verl.patches", "mapo_verl.cpu")))
    assert not bad, bad


def test_cpu_backend_has_no_demo_wiring():
    bad = _offending("mapo_verl.cpu", lambda i: i.startswith("mapo_verl.demo"))
    assert not bad, bad


def test_contract_imports_nothing_of_mapo_verl():
    assert not {i for i in _imported_names("mapo_verl.core.contract") if _top(i) == "mapo_verl"}


def test_docstrings_cite_design_not_outside_documents():
    """Citations point into docs/DESIGN.md, never to a spec section or an issue number outside the repository."""
    import re

    pattern = re.compile(r"§|MAPO_SPEC|\b[Ii]ssue \d")
    files = [*MODULES.values(), *(ROOT / "scripts").glob("*.py"), *(ROOT / "scripts").glob("*.sh")]
    bad = [f"{path.relative_to(ROOT)}:{number}" for path in files
           for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, bad
