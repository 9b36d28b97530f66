"""Test-only shims that let megatron-core 0.16.1 run on CPU with gloo.

megatron-core assumes CUDA in a handful of places that our tests reach: the current
device, ``synchronize``, ``device="cuda"`` zeros in the pipeline schedules, the global
memory buffer (it allocates on the current device), the CUDA RNG tracker and the RNG
state get/set used by activation recompute. These shims replace exactly those, for the
process that calls :func:`install`; nothing here is imported by the package.
"""

from __future__ import annotations

import types

import torch

_INSTALLED = False


class _CpuTorchProxy(types.ModuleType):
    """``torch`` as seen by the pipeline schedules, with ``device="cuda"`` mapped to CPU."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


def install() -> None:
    """Install every shim (idempotent). Call before building a megatron-core model."""
    global _INSTALLED
    if _INSTALLED:
        return
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None

    from megatron.core.pipeline_parallel import schedules
    from megatron.core.tensor_parallel import random as mcore_random

    schedules.torch = _CpuTorchProxy()
    # Recompute saves and restores the "CUDA" RNG state; on CPU the CPU state is the one in use.
    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: None
    mcore_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _INSTALLED = True
