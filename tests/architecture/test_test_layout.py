"""The tests mirror the package (docs/DESIGN.md, "Layout"): ``tests/core`` stays as pure as ``mapo_verl/core``,
and test helpers are imported one way.

``tests/core`` may import the standard library, torch, pytest, numpy, hypothesis, ``mapo_verl.core`` and its own
helpers (``tests.core``); a test that needs veRL (directly or through ``mapo_verl.config``, ``verl_ext``, the
plugin or the patches) belongs under ``tests/verl_ext/`` or the folder of the layer it tests.

Test helpers are imported absolutely, ``from tests.<area>.<module> import ...``: no relative import and no
``sys.path`` edit. Exempt are ``tests/megatron/`` and ``tests/megatron_bridge/``: their ``*_harness.py`` scripts
run as stand-alone processes and import ``gloo_world`` (and ``vllm_loaders``) as top-level modules, so the
harnesses and the tests that share those modules put their folders on ``sys.path``.

Read with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
CORE_ALLOWED = {"torch", "pytest", "numpy", "hypothesis"}
CORE_ALLOWED_PREFIXES = ("mapo_verl.core", "tests.core")
SYS_PATH_EXEMPT = {TESTS / "megatron", TESTS / "megatron_bridge"}


def _imports(path: pathlib.Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _core_import_allowed(module: str) -> bool:
    top = module.partition(".")[0]
    if top in CORE_ALLOWED or top in sys.stdlib_module_names or top == "__future__":
        return True
    return any(module == prefix or module.startswith(prefix + ".") for prefix in CORE_ALLOWED_PREFIXES)


@pytest.mark.parametrize("path", sorted(TESTS.joinpath("core").rglob("*.py")), ids=lambda p: p.name)
def test_core_tests_import_only_torch_and_the_core(path):
    outside = []
    for node in _imports(path):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] if not node.level else []  # relative imports are the next test's
        else:
            modules = [alias.name for alias in node.names]
        outside += [f"line {node.lineno}: {m}" for m in modules if not _core_import_allowed(m)]
    assert not outside, f"{path.relative_to(TESTS.parent)} imports outside the core's test set: {outside}"


def _python_files() -> list[pathlib.Path]:
    return sorted(path for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts)


def test_helpers_are_imported_absolutely():
    found = []
    for path in _python_files():
        name = path.relative_to(TESTS.parent)
        found += [f"{name}:{node.lineno} relative import" for node in _imports(path)
                  if isinstance(node, ast.ImportFrom) and node.level]
        if path.parent in SYS_PATH_EXEMPT:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [f"{name}:{node.lineno} sys.path" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr == "path"
                  and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not found, f"import test helpers as `from tests.<area>.<module> import ...`: {found}"


def test_helpers_are_not_imported_by_their_bare_name():
    """``from attention_testlib import ...`` works only through pytest's rootdir insertion; it must name the area."""
    helpers = {path.stem for path in _python_files()
               if not path.name.startswith(("test_", "conftest", "__init__")) and path.parent not in SYS_PATH_EXEMPT}
    found = []
    for path in _python_files():
        if path.parent in SYS_PATH_EXEMPT:
            continue
        for node in _imports(path):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{path.relative_to(TESTS.parent)}:{node.lineno} {m}" for m in modules
                      if m.partition(".")[0] in helpers]
    assert not found, f"import test helpers as `from tests.<area>.<module> import ...`: {found}"


def test_every_test_folder_is_a_package():
    """Test folders are packages (``tests.<area>``), as the package's folders are; the stand-alone harness
    folders are the documented exception."""
    folders = {path.parent for path in TESTS.rglob("test_*.py")} - SYS_PATH_EXEMPT
    assert sorted(str(f.relative_to(TESTS.parent)) for f in folders if not (f / "__init__.py").is_file()) == []
