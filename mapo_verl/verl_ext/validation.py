"""MAPO's own config checks, run before Ray starts by :func:`mapo_verl.verl_ext.recipe_checks.install_config_check`.

A MAPO setting that cannot work is reported at launch, naming the key to change, rather
than after the first rollout.
"""

from __future__ import annotations

from mapo_verl.config import CONFIG_PREFIX, MAPOPolicyLossConfig, mapo_config_from
from mapo_verl.core import LOSS_AGG_MODES
from mapo_verl.verl_ext.advantage import MAPO_ESTIMATOR

__all__ = ["MAPO_TRAINER_MODE", "check_mapo_config"]

MAPO_TRAINER_MODE = "mapo"
# Actor strategies for which MAPO registers an engine with the attention-loss hooks.
ATTENTION_LOSS_STRATEGIES = ("fsdp", "fsdp2", "megatron")


def _policy_loss_target_is_mapo(config) -> bool:
    from hydra.utils import get_class

    target = config.actor_rollout_ref.actor.policy_loss.get("_target_", "")
    try:
        return bool(target) and issubclass(get_class(target), MAPOPolicyLossConfig)
    except Exception:
        return False


def check_mapo_config(config) -> None:
    """Raise a ``ValueError`` naming the key when a full trainer config misuses MAPO."""
    estimator = config.algorithm.get("adv_estimator")
    trainer_mode = config.trainer.get("v1", {}).get("trainer_mode")
    if estimator != MAPO_ESTIMATOR:
        if trainer_mode == MAPO_TRAINER_MODE:
            raise ValueError(
                f"trainer.v1.trainer_mode=mapo runs MAPO's ablated pass, but algorithm.adv_estimator="
                f"{estimator!r}: set algorithm.adv_estimator=mapo (or trainer.v1.trainer_mode=sync for plain GRPO)"
            )
        return
    if not config.trainer.get("use_v1", True):
        raise ValueError("algorithm.adv_estimator=mapo runs on veRL's v1 trainer: set trainer.use_v1=true")
    if trainer_mode != MAPO_TRAINER_MODE:
        raise ValueError(
            f"algorithm.adv_estimator=mapo needs the audio-ablated entropies, which only the MAPO trainer "
            f"computes: set trainer.v1.trainer_mode=mapo (got {trainer_mode!r})"
        )
    if not _policy_loss_target_is_mapo(config):
        raise ValueError(
            f"algorithm.adv_estimator=mapo reads its hyper-parameters from {CONFIG_PREFIX}: set "
            "actor_rollout_ref.actor.policy_loss._target_=mapo_verl.config.MAPOPolicyLossConfig"
        )
    mapo = mapo_config_from(config)  # validates every MAPO value, naming the key
    strategy = config.actor_rollout_ref.actor.strategy
    if mapo.attention.enabled and strategy not in ATTENTION_LOSS_STRATEGIES:
        raise ValueError(
            f"{CONFIG_PREFIX}.attention.coef > 0 needs one of MAPO's attention-loss engines "
            f"({', '.join(ATTENTION_LOSS_STRATEGIES)}), but actor_rollout_ref.actor.strategy={strategy!r}: "
            f"choose one of them or set {CONFIG_PREFIX}.attention.coef=0"
        )
    rollout_correction = config.algorithm.get("rollout_correction") or {}
    if rollout_correction.get("bypass_mode", False):
        raise ValueError(
            "MAPO needs the policy entropies of the old-log-prob pass, which bypass mode skips: set "
            "algorithm.rollout_correction.bypass_mode=false"
        )
    loss_agg_mode = config.actor_rollout_ref.actor.loss_agg_mode
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(
            f"actor_rollout_ref.actor.loss_agg_mode must be one of {list(LOSS_AGG_MODES)} for MAPO, "
            f"got {loss_agg_mode!r}"
        )
