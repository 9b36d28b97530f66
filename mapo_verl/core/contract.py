"""The names MAPO's trainer, worker, engines and config agree on, each spelled once (docs/DESIGN.md, "Layout").

Plain constants and the one function that spells the per-modality metric names, no import: every
layer (the math core, the HF and Megatron hooks, the veRL adapters, the report) may read them.
"""

from __future__ import annotations

__all__ = [
    "CONFIG_PREFIX",
    "MAPO_ESTIMATOR",
    "MAPO_TRAINER_MODE",
    "MAPO_ENGINE_VENDOR",
    "COEF_FIELD",
    "GATE_FIELD",
    "FAILED_FIELD",
    "ABLATED_ENTROPY_FIELD",
    "HAS_AUDIO_FIELD",
    "ABLATION_SEED_KEY",
    "ABLATION_MODES",
    "MODALITY_SCOPES",
    "HEAD_REDUCTIONS",
    "LAYER_REDUCTIONS",
    "ATTN_LOSS_METRIC",
    "MASS_STEM",
    "LIFT_STEM",
    "SAMPLE_FRAC_STEM",
    "AUDIO_LABEL",
    "modality_metric",
    "DELTA_H_METRIC",
    "LATE_EARLY_SUFFIX",
]

# The config section MAPO reads (named in every config error).
CONFIG_PREFIX = "actor_rollout_ref.actor.policy_loss.mapo"

# Names MAPO registers in veRL: algorithm.adv_estimator, trainer.v1.trainer_mode, the EngineRegistry vendor.
MAPO_ESTIMATOR = "mapo"
MAPO_TRAINER_MODE = "mapo"
MAPO_ENGINE_VENDOR = "mapo"

# Response-aligned batch fields the trainer writes for the actor update.
COEF_FIELD = "mapo_attn_coef"  # c_t = gate_g · (t/T_g)^κ · ν̃_t · pos_t
GATE_FIELD = "mapo_attn_gate"  # 0/1: the token counts in N
FAILED_FIELD = "mapo_task_failed"  # 0/1 per response token: fail_g of the token's response (diagnostics)
# Batch fields the worker's audio-ablated pass returns.
ABLATED_ENTROPY_FIELD = "mapo_ablated_entropy"  # H_abl per response token
HAS_AUDIO_FIELD = "mapo_has_audio"  # [B] 0/1: the row's inputs held audio features
# The one per-step value of the ablated pass that travels in the batch's extra_info (the noise seed).
ABLATION_SEED_KEY = "mapo_seed"

# Choices of the MAPO config.
ABLATION_MODES = ("drop", "zero", "noise")
MODALITY_SCOPES = ("audio", "all")
HEAD_REDUCTIONS = ("max", "mean")
LAYER_REDUCTIONS = ("mean", "max")

# Metrics shared by the trainer, the engines and the collapse report.
ATTN_LOSS_METRIC = "mapo/attn_loss"
DELTA_H_METRIC = "mapo/delta_h"
LATE_EARLY_SUFFIX = "late_early_ratio"

# Metrics that name the modalities MAPO acts on: ``mapo/<label>_<stem>``, the label being the configured
# modalities joined by "+" (mapo_verl.modalities.metric_label); audio alone keeps the names ``mapo/audio_*``.
AUDIO_LABEL = "audio"
MASS_STEM = "mass"  # a_t, the attention mass on the modality's keys (+ /decile_k, /late_early_ratio, _failed, _success)
LIFT_STEM = "lift"  # a_t over the uniform share of the keys
SAMPLE_FRAC_STEM = "sample_frac"  # share of the batch's rows that hold the modality


def modality_metric(label: str, stem: str) -> str:
    """``mapo/<label>_<stem>``, e.g. ``mapo/audio_mass``, ``mapo/image_mass``, ``mapo/audio+image_lift``."""
    return f"mapo/{label}_{stem}"
