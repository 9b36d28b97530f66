"""Run veRL end to end on a CPU-only machine — for dry runs and CI, never for real training.

For machines with a CPU only (torch CPU build, no vLLM / flash-attn), through veRL 0.9.1's
platform, engine and rollout registries and the v1 trainer behind ``main_ppo`` (docs/DESIGN.md, "Layout").

Switched on by veRL's own platform switch, ``VERL_PLATFORM=cpu`` (inherited by the Ray
workers a local run starts); without it :func:`register_cpu_backend` does nothing, so GPU
users see no change. When on, in every process that imports veRL it:

- registers the ``cpu`` platform (:mod:`mapo_verl.cpu.platform`: gloo collectives, host
  memory statistics, Ray's GPU resource as the logical accelerator);
- makes veRL's default ``"cpu:gloo,cpu:gloo"`` process-group string acceptable to torch
  (:mod:`mapo_verl.cpu.distributed`);
- selects veRL's CUDA engine classes (FSDP2 runs on CPU tensors) through veRL's
  ``VERL_ENGINE_DEVICE`` switch, unless the user set it, and keeps the FSDP engine's
  reference-model CPU offload from pinning memory (pinning needs an accelerator);
- registers the ``hf`` rollout backend (:mod:`mapo_verl.cpu.rollout`) in veRL's rollout
  registries, when veRL imports them;
- where Megatron-Bridge is installed, installs :mod:`mapo_verl.cpu.megatron` when the first
  Megatron engine is created (Transformer Engine stand-in, local layer spec, CUDA stand-ins).

A run also needs, in its config: FSDP2 for actor and ref (FSDP1 refuses CPU parameters) or
Megatron in bf16 with local attention, ``sdpa`` attention, ``trainer.device=cpu``, fake Ray GPUs
(``+ray_kwargs.ray_init.num_gpus``) and enough logical CPUs; ``recipes/parts/tiny_cpu.yaml`` and
``recipes/parts/tiny_cpu_megatron.yaml`` set all of it.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["CPU_PLATFORM_ENV", "ROLLOUT_NAME", "cpu_backend_requested", "register_cpu_backend"]

CPU_PLATFORM_ENV = "VERL_PLATFORM"
ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name of the HF-generate backend

_registered = False


def cpu_backend_requested() -> bool:
    """True when this process runs veRL on the CPU platform (``VERL_PLATFORM=cpu``)."""
    return os.environ.get(CPU_PLATFORM_ENV, "").strip().lower() == "cpu"


def _register_rollout(replica_module) -> None:
    def load():
        from mapo_verl.cpu.rollout import HFRolloutReplica

        return HFRolloutReplica

    replica_module.RolloutReplicaRegistry.register(ROLLOUT_NAME, load)


def _register_server_adapter(base_module) -> None:
    base_module._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "mapo_verl.cpu.rollout.HFServerAdapter"


def _unpinned_cpu_offload(engine_module) -> None:
    """The FSDP engine offloads the reference model with ``CPUOffloadPolicy(pin_memory=True)``;
    pinning needs an accelerator, and on CPU the parameters are host memory anyway."""
    policy = engine_module.CPUOffloadPolicy
    if policy is None or getattr(policy, "__mapo_unpinned__", False):
        return

    def unpinned_cpu_offload_policy(pin_memory: bool = True):
        return policy(pin_memory=False)

    unpinned_cpu_offload_policy.__mapo_unpinned__ = True
    engine_module.CPUOffloadPolicy = unpinned_cpu_offload_policy


def _megatron_on_cpu(engine_module) -> None:
    """Install :mod:`mapo_verl.cpu.megatron` when the first Megatron engine is created (importing
    Megatron-Bridge takes tens of seconds: processes that build no model skip it)."""
    engine_class = engine_module.MegatronEngine
    init = engine_class.__init__
    if getattr(init, "__mapo_cpu__", False):
        return

    def init_on_cpu(self, *args, **kwargs):
        from mapo_verl.cpu import megatron

        megatron.install()
        init(self, *args, **kwargs)

    init_on_cpu.__mapo_cpu__ = True
    engine_class.__init__ = init_on_cpu


def register_cpu_backend() -> None:
    """Activate the CPU backend in this process if ``VERL_PLATFORM=cpu``. Idempotent."""
    global _registered
    if _registered:
        return
    if not cpu_backend_requested():
        return
    from verl.plugin.platform import platform_manager

    from mapo_verl.cpu import distributed, platform  # noqa: F401  (platform registers itself)
    from mapo_verl.patches._hooks import when_imported

    resolved = platform_manager._current_platform
    if resolved is not None and resolved.device_name != "cpu":
        raise RuntimeError(
            f"VERL_PLATFORM=cpu, but veRL already resolved its platform to {resolved.device_name!r} before "
            "mapo_verl's plugin ran; import mapo_verl (or verl) before anything that queries the device"
        )
    distributed.install()
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")
    when_imported("verl.workers.engine.fsdp.transformer_impl", _unpinned_cpu_offload)
    when_imported("verl.workers.rollout.base", _register_server_adapter)
    when_imported("verl.workers.rollout.replica", _register_rollout)
    if importlib.util.find_spec("megatron.bridge") is not None:
        when_imported("verl.workers.engine.megatron.transformer_impl", _megatron_on_cpu)
    _registered = True
