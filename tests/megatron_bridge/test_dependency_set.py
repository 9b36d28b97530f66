"""The `megatron` extra's Python 3.12 set is one that pip can satisfy together with veRL 0.9.1 and
Megatron-Bridge's own pins — checked on the environment this lane installed from it.

A full ``pip install --dry-run ".[megatron]"`` also walks Megatron-Bridge's CUDA-only tree (flashinfer,
Transformer Engine, nvidia-resiliency-ext, …): on this machine it ran past 15 minutes, so CI checks the
part that decides whether a set exists — every requirement that mapo-verl's extra, veRL 0.9.1 and
Megatron-Bridge 0.5.1 state on the shared packages (torch, transformers, megatron-core, hydra-core) holds
for the installed versions, and the extra names exactly those versions.
"""

from __future__ import annotations

import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

SHARED = {"torch", "transformers", "megatron-core", "hydra-core", "megatron-bridge"}


def _requirements(dist: str, extras: tuple[str, ...] = ()) -> list[Requirement]:
    found = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        environment = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
                       "extra": next(iter(extras), "")}
        if req.marker is None or any(req.marker.evaluate({**environment, "extra": e}) for e in extras or ("",)):
            found.append(req)
    return found


@pytest.mark.parametrize("dist, extras", [("mapo-verl", ("megatron",)), ("verl", ()), ("megatron-bridge", ())])
def test_every_pin_on_the_shared_packages_holds(dist, extras):
    checked = []
    for req in _requirements(dist, extras):
        name = req.name.lower().replace("_", "-")
        if name not in SHARED:
            continue
        installed = metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), f"{dist} wants {req}, installed {installed}"
        checked.append(name)
    assert checked, f"{dist} states no requirement on {sorted(SHARED)}"


def test_the_extra_names_the_tested_versions():
    pins = {r.name: str(r.specifier) for r in _requirements("mapo-verl", ("megatron",)) if r.name in SHARED}
    assert pins["megatron-core"] == "==0.18.2" and pins["megatron-bridge"] == "==0.5.1"
    assert metadata.version("megatron-core") == "0.18.2" and metadata.version("megatron-bridge") == "0.5.1"
    assert metadata.version("verl") == "0.9.1"
