"""Import-order-proof registration (docs/DESIGN.md "Registration").

veRL registers MAPO from its plugin autoload, which runs inside ``import verl``. When the first
``import verl`` of a process happens inside a MAPO module (``import mapo_verl.config`` before
``import verl``), the registration would run while that module is half-built and fail. So the
first import of a MAPO module that needs veRL imports veRL *before* the module starts executing:
the registration then runs with no MAPO module half-built, and if it imported the requested
module itself, that very module object is handed back (never executed twice).

This module imports nothing from veRL; ``import mapo_verl`` alone still does not import veRL.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys

# MAPO modules whose top level imports veRL (directly or through mapo_verl.config).
VERL_DEPENDENT = ("mapo_verl.config", "mapo_verl.verl_ext", "mapo_verl.patches", "mapo_verl.cpu",
                  "mapo_verl.data.dataset")


class _AlreadyLoaded(importlib.abc.Loader):
    """Hands back a module that the veRL import has just executed, keeping its own spec."""

    def __init__(self, module):
        self._module = module
        self._spec = module.__spec__

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        module.__spec__ = self._spec


class VerlFirstFinder(importlib.abc.MetaPathFinder):
    """Imports veRL (and so runs its plugin autoload) before the first veRL-dependent MAPO module."""

    def find_spec(self, fullname, path=None, target=None):
        if "verl" in sys.modules or not any(fullname == name or fullname.startswith(name + ".")
                                            for name in VERL_DEPENDENT):
            return None
        importlib.import_module("verl")  # runs the plugin autoload: MAPO registers here
        if "mapo_verl" in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(","):
            importlib.import_module("mapo_verl.plugin")  # mapo_verl itself was imported before veRL asked for it
        module = sys.modules.get(fullname)
        if module is None:
            return None  # not imported by the registration: load it the ordinary way
        spec = importlib.machinery.ModuleSpec(fullname, _AlreadyLoaded(module), origin=module.__spec__.origin,
                                              is_package=hasattr(module, "__path__"))
        # The import system prefers the __spec__ of a module that appeared in sys.modules during
        # find_spec (and would execute it again): lend it this spec until exec_module restores it.
        module.__spec__ = spec
        return spec


def install() -> None:
    """Put :class:`VerlFirstFinder` first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, VerlFirstFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, VerlFirstFinder())
