"""MAPO's own config checks, run before Ray starts by :func:`mapo_verl.verl_ext.recipe_checks.install_config_check`.

A MAPO setting that cannot work is reported at launch, naming the key to change, rather
than after the first rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from mapo_verl.config import MAPOConfig, MAPOPolicyLossConfig, POSGateConfig, mapo_config_from
from mapo_verl.core import LOSS_AGG_MODES, resolve_layers
from mapo_verl.core.contract import CONFIG_PREFIX, MAPO_ESTIMATOR, MAPO_TRAINER_MODE
from mapo_verl.pos_gate import build_tagger
from mapo_verl.verl_ext.text_reference import check_text_reference

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["FOLDABLE_LOSS_MODES", "check_mapo_config"]

# Actor strategies for which MAPO registers an engine with the attention-loss hooks.
ATTENTION_LOSS_STRATEGIES = ("fsdp", "fsdp2", "megatron")
# veRL 0.9.1 policy losses whose per-token loss is positively homogeneous in the advantage,
# ℓ(w·A) = w·ℓ(A) for w ≥ 0 (clipping decided by the advantage's sign only): folding ω̃ into the
# advantages gives exactly their ω̃-weighted form.
FOLDABLE_LOSS_MODES = ("vanilla", "gspo", "sapo", "gpg", "cispo", "dppo_tv", "dppo_kl")
# Loss modes that aggregate with a fixed loss_agg_mode whatever the actor's: the fold must use the same.
FIXED_AGG_MODES = {"sapo": "seq-mean-token-mean"}
# The others, and why the fold would silently change them.
UNFOLDABLE_LOSS_MODES = {
    "geo_mean": "it averages the advantage over each sequence, so the fold cancels and ω̃ has no effect",
    "clip_cov": "it picks the tokens to clip by the advantage's value, so the fold changes which tokens it picks",
    "kl_cov": "it picks the tokens to penalise by the advantage's value, so the fold changes which tokens it picks",
    "dro": "its quadratic log-ratio penalty is not scaled by the advantage, so ω̃ would weight only part of it",
    "bypass_mode": "bypass mode skips the old-log-prob pass that gives MAPO the policy entropies",
}


def _policy_loss_target_is_mapo(config: DictConfig) -> bool:
    from hydra.utils import get_class

    target = config.actor_rollout_ref.actor.policy_loss.get("_target_", "")
    try:
        return bool(target) and issubclass(get_class(target), MAPOPolicyLossConfig)
    except Exception:
        return False


def local_model_config(config: DictConfig) -> PretrainedConfig | None:
    """The actor's HF config when it is on this machine, else None (a remote path or an uncached hub id:
    the workers load, and check, it)."""
    from transformers import AutoConfig

    model = config.actor_rollout_ref.model
    try:
        return AutoConfig.from_pretrained(str(model.path), trust_remote_code=bool(model.get("trust_remote_code")),
                                          local_files_only=True)
    except Exception:
        return None


def _decoder_layer_count(config: DictConfig) -> int | None:
    """``num_hidden_layers`` of the actor's text decoder, when its config is on this machine (else None)."""
    hf_config = local_model_config(config)
    if hf_config is None:
        return None
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    layers = getattr(text_config, "num_hidden_layers", None)
    return layers if isinstance(layers, int) and layers > 0 else None


def _check_layers_against_model(config: DictConfig, layers: list[int]) -> None:
    num_layers = _decoder_layer_count(config)
    if num_layers is None:
        return
    try:
        resolve_layers(list(layers), num_layers)
    except ValueError as error:
        raise ValueError(f"{error} (the decoder of actor_rollout_ref.model.path={config.actor_rollout_ref.model.path})"
                         ) from error


def _check_pos_tagger(gate: POSGateConfig) -> None:
    """Build the POS gate's tagger now, so a missing spaCy pipeline / NLTK data fails before Ray starts."""
    try:
        build_tagger(gate.tagger, gate.tags)
    except (RuntimeError, ValueError, ImportError) as error:
        raise ValueError(f"{CONFIG_PREFIX}.pos_gate.tagger={gate.tagger!r}: {error}") from error


def check_mapo_config(config: DictConfig) -> None:
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
    if mapo.text_ref_model is not None:
        check_text_reference(config)
    if mapo.attention.enabled:
        _check_layers_against_model(config, mapo.attention.layers)
        if mapo.pos_gate.enable:
            _check_pos_tagger(mapo.pos_gate)
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
    _check_policy_loss(config.actor_rollout_ref.actor, mapo)


def _check_policy_loss(actor: DictConfig, mapo: MAPOConfig) -> None:
    """ω̃ (and attention-only's zero PG weight) enter through the advantages: only loss modes whose
    token loss is positively homogeneous in the advantage get their weighted form (docs/DESIGN.md)."""
    loss_mode = actor.policy_loss.get("loss_mode", "vanilla")
    if loss_mode not in FOLDABLE_LOSS_MODES:
        reason = UNFOLDABLE_LOSS_MODES.get(loss_mode, "its token loss is not known to be positively homogeneous "
                                                      "in the advantage")
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r} cannot carry MAPO's relevance weights "
            f"({reason}): choose one of {list(FOLDABLE_LOSS_MODES)}"
        )
    fixed = FIXED_AGG_MODES.get(loss_mode)
    if fixed is not None and actor.loss_agg_mode != fixed:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r} always aggregates with {fixed!r}, and "
            f"MAPO folds ω̃ for actor_rollout_ref.actor.loss_agg_mode={actor.loss_agg_mode!r}: set it to {fixed!r}"
        )
    if mapo.attention_only:
        for key, active in (("use_kl_loss", bool(actor.get("use_kl_loss", False))),
                            ("entropy_coeff", float(actor.get("entropy_coeff", 0.0)) != 0.0)):
            if active:
                raise ValueError(
                    f"{CONFIG_PREFIX}.attention_only=true trains on η·L_attn alone, but actor_rollout_ref.actor.{key} "
                    f"adds another loss term: set actor_rollout_ref.actor.{key} to false / 0"
                )
