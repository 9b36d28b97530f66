"""Everything MAPO registers in veRL, in one place (called by :mod:`mapo_verl.plugin`)."""

from __future__ import annotations

_registered = False


def register_all() -> None:
    """Register the ``mapo`` estimator and install the launch-time config check. Idempotent."""
    global _registered
    if _registered:
        return
    from mapo_verl.verl_ext import advantage  # noqa: F401  (registers adv_estimator "mapo")
    from mapo_verl.verl_ext.validation import install_config_check

    install_config_check()
    _registered = True
