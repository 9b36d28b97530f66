"""MAPO's math core: pure torch, no veRL or Megatron import (docs/DESIGN.md).

The names shared by trainer, worker and engines live in :mod:`mapo_verl.core.contract`.
Symbols follow docs/DESIGN.md: ω̃ (``omega``) relevance weights, ν̃ (``nu``) inverse
weights, τ_T the length-scaled temperature, κ the temporal exponent, C_mask the weight
cap, C_pref the preference-gate cap, ε the log floor.
"""

from mapo_verl.core.aggregation import (
    BATCH_NORMALISED_MODES,
    LOSS_AGG_MODES,
    PER_SEQUENCE_MODES,
    aggregate_token_losses,
    check_loss_agg_mode,
    fold_relevance_into_advantages,
)
from mapo_verl.core.audio_mass import (
    check_reductions,
    indicator_values,
    mass_from_output,
    reduce_heads,
    reduce_layers,
    resolve_layers,
)
from mapo_verl.core.attention_loss import (
    attention_objective,
    attention_objective_from_coefficients,
    attention_token_coefficients,
    sequence_gate,
)
from mapo_verl.core.diagnostics import (
    NUM_DECILES,
    audio_lift,
    decile_metrics,
    late_early_ratio,
    position_deciles,
    position_metrics,
    sums_by_decile,
)
from mapo_verl.core.weights import length_scaled_temperature, relevance_weights, temporal_weights

__all__ = [
    "LOSS_AGG_MODES",
    "PER_SEQUENCE_MODES",
    "BATCH_NORMALISED_MODES",
    "check_loss_agg_mode",
    "relevance_weights",
    "temporal_weights",
    "length_scaled_temperature",
    "fold_relevance_into_advantages",
    "aggregate_token_losses",
    "sequence_gate",
    "attention_token_coefficients",
    "attention_objective_from_coefficients",
    "attention_objective",
    "check_reductions",
    "resolve_layers",
    "indicator_values",
    "mass_from_output",
    "reduce_heads",
    "reduce_layers",
    "NUM_DECILES",
    "audio_lift",
    "position_deciles",
    "sums_by_decile",
    "decile_metrics",
    "late_early_ratio",
    "position_metrics",
]
