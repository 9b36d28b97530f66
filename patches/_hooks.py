"""Run a patch when a module is imported (now, if it already is).

Patching a heavy veRL module at ``import verl`` time would make every process (trainer,
workers, reward and agent-loop actors) import it; a post-import hook patches it exactly
when, and in exactly the processes where, veRL itself imports it.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Callable

__all__ = ["when_imported", "replace_function", "wrap_methods"]

_lock = threading.Lock()
_pending: dict[str, list[Callable[[ModuleType], None]]] = {}


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the patches registered for the module."""

    def __init__(self, loader: importlib.abc.Loader, name: str):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        with _lock:
            patches = _pending.pop(self._name, [])
        for patch in patches:
            patch(module)

    def __getattr__(self, item):  # get_source, is_package, ... for tracebacks and pkgutil
        return getattr(self._loader, item)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


_finder = _PostImportFinder()


def when_imported(module_name: str, patch: Callable[[ModuleType], None]) -> None:
    """Call ``patch(module)`` once ``module_name`` is imported (immediately if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None:
        patch(module)
        return
    with _lock:
        _pending.setdefault(module_name, []).append(patch)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def replace_function(home: str, name: str, wrap: Callable[[Callable], Callable], importers: tuple[str, ...] = ()) -> None:
    """Replace ``<home>.<name>`` by ``wrap(original)`` once ``home`` is imported.

    Modules in ``importers`` that did ``from <home> import <name>`` hold their own reference;
    each is rebound too (now, or when it is imported). The patched function keeps the
    original as ``__mapo_original__``; patching twice is a no-op.
    """

    def patch_home(module: ModuleType) -> None:
        original = getattr(module, name)
        if hasattr(original, "__mapo_original__"):
            return
        patched = wrap(original)
        patched.__mapo_original__ = original
        setattr(module, name, patched)

        def rebind(other: ModuleType) -> None:
            if getattr(other, name, None) is original:
                setattr(other, name, patched)

        for importer in importers:
            when_imported(importer, rebind)

    when_imported(home, patch_home)


def wrap_methods(cls: type, marker: str, wrappers: dict[str, Callable[[Callable], Callable]]) -> None:
    """Replace each ``cls.<name>`` by ``wrap(original)``, once: ``marker`` is set on ``cls`` and a second call
    with it is a no-op."""
    if getattr(cls, marker, False):
        return
    for name, wrap in wrappers.items():
        setattr(cls, name, wrap(getattr(cls, name)))
    setattr(cls, marker, True)
