"""Everything MAPO registers in veRL, in one place (called by :mod:`mapo_verl.plugin`)."""

from __future__ import annotations

import importlib.util

_registered = False


def register_all() -> None:
    """Register MAPO's estimator, trainer and engines, apply the patches, install the config check.

    Idempotent. The Megatron engine is registered only where megatron-core is installed.
    """
    global _registered
    if _registered:
        return
    from mapo_verl.cpu import register_cpu_backend
    from mapo_verl.patches import apply_audio_model_patches

    # first: the CPU platform must be registered before anything below resolves veRL's platform
    register_cpu_backend()  # no-op unless VERL_PLATFORM=cpu (dry runs and CI)
    apply_audio_model_patches()
    from mapo_verl.verl_ext import advantage  # noqa: F401  (registers adv_estimator "mapo")
    from mapo_verl.verl_ext import fsdp_engine  # noqa: F401  (FSDP engine, vendor "mapo")
    from mapo_verl.verl_ext import trainer  # noqa: F401  (registers trainer_mode "mapo")
    from mapo_verl.verl_ext.recipe_checks import install_config_check

    if importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None:
        from mapo_verl.verl_ext import megatron_engine  # noqa: F401  (Megatron engine, vendor "mapo")
    install_config_check()
    _registered = True
