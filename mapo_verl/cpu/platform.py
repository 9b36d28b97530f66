"""A ``cpu`` platform for veRL's platform registry — for dry runs and CI, not for training.

veRL 0.9.1 ships CUDA, NPU and ROCm platforms only. This one lets the whole stack (Ray
workers, FSDP2 engine, rollout, weight sync) run on a CPU-only machine so a recipe can be
exercised end to end in minutes: collectives use gloo, "devices" are the process's CPU,
and Ray's GPU resource is faked (``ray_kwargs.ray_init.num_gpus``) so veRL's resource
pools schedule as they would on GPUs.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

__all__ = ["PLATFORM_NAME", "PlatformCPU", "cpu_device_module"]

PLATFORM_NAME = "cpu"


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _make_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda``-style calls veRL makes on its device module.

    Memory statistics report the process's resident set size (CPU memory is what the
    process holds; there is no separate allocator to query). Caches, streams and IPC have
    no CPU counterpart and are no-ops.
    """
    module = types.ModuleType("mapo_verl.cpu.device", "torch.cpu with the device-module calls veRL makes")
    for name in ("Stream", "Event", "stream", "current_stream", "synchronize", "is_available", "device_count"):
        setattr(module, name, getattr(torch.cpu, name))

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total

    module.current_device = lambda: "cpu"
    module.set_device = lambda device: None
    module.empty_cache = lambda: None
    module.ipc_collect = lambda: None
    module.set_per_process_memory_fraction = lambda fraction, device=None: None
    module.memory_allocated = lambda device=None: _rss_bytes()
    module.memory_reserved = lambda device=None: _rss_bytes()
    module.max_memory_allocated = lambda device=None: _rss_bytes()
    module.max_memory_reserved = lambda device=None: _rss_bytes()
    module.reset_peak_memory_stats = lambda device=None: None
    module.mem_get_info = mem_get_info
    module.get_device_name = lambda device=None: "cpu"
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    return module


cpu_device_module = _make_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """veRL platform on the host CPU; chosen only with ``VERL_PLATFORM=cpu`` (never auto-detected)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return cpu_device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # never auto-detected: a GPU host whose GPUs are not visible must not silently land here
        return False

    def current_device(self) -> str:
        # veRL moves tensors with ``.to(get_device_id())``: an int would mean a CUDA ordinal
        # (``torch.cpu.current_device()`` is ``"cpu"`` for the same reason)
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray's (fake) GPU resource sets this one; nothing reads it on CPU
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # veRL's worker groups ask Ray for GPUs; on CPU those are logical (ray_init.num_gpus)
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
