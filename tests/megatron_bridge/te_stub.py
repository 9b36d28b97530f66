"""Import-time stand-in for Transformer Engine on CPU test machines (tests only; never on the GPU path).

Megatron-Bridge imports ``transformer_engine`` unconditionally (its diffusion models and
LoRA layers subclass TE modules at import time), and Transformer Engine needs CUDA.
:func:`import_megatron_bridge` imports Megatron-Bridge with a meta-path finder that serves
``transformer_engine*`` modules *to Megatron-Bridge's own modules only*: their attributes
are placeholder classes (subclassing one works, so the modules import; instantiating one
raises). Every other importer — megatron-core, veRL's ``find_spec`` probe — is told that
Transformer Engine is absent, which is the truth, so megatron-core runs exactly as it does
without TE (``HAVE_TE = False``) and the models built with the local layer spec never touch
a placeholder. The stand-in modules leave ``sys.modules`` once the import is done.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["import_megatron_bridge"]

_ROOTS = ("transformer_engine", "transformer_engine_torch")
_SERVED_IMPORTERS = ("megatron.bridge",)


class _PlaceholderMeta(type):
    """Classes that answer any attribute with another placeholder class (``te.ops.Sequential``)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


_placeholders: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    cls = _placeholders.get(qualname)
    if cls is None:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{qualname} belongs to Transformer Engine, which is not installed (test stand-in)")

        cls = _PlaceholderMeta(qualname.rpartition(".")[2], (), {"__init__": __init__, "__qualname__": qualname})
        _placeholders[qualname] = cls
    return cls


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__}.{name}")


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: submodules come from this finder too
        return module

    def exec_module(self, module):
        pass


def _importer() -> str:
    """``__name__`` of the module whose code runs the import (import machinery frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back
    return ""


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in _ROOTS or not _importer().startswith(_SERVED_IMPORTERS):
            return None
        return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)


def import_megatron_bridge():
    """Import ``megatron.bridge`` (all its model bridges) on a machine without Transformer Engine."""
    if importlib.util.find_spec("transformer_engine") is not None:
        import megatron.bridge

        return megatron.bridge
    finder = _StubFinder()
    sys.meta_path.append(finder)
    try:
        import megatron.bridge
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in _ROOTS]:
            del sys.modules[name]
    return megatron.bridge
