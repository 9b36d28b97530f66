"""MAPO's per-batch computations on the trainer, on padded response tensors (pure torch).

The trainer adapter fetches tensors from veRL's TransferQueue and calls these; they only
compose the math core (no formula is re-derived here):

1. :func:`relevance_for_batch` — Δh, ω̃ and ν̃ for a batch, with ω̃ ≡ 1 and no attention
   weight for samples that carry no audio;
2. :func:`folded_advantages` — GRPO's advantages with ω̃ folded in (docs/DESIGN.md, "ω̃ enters
   through the advantages"), at zero weight in attention-only mode;
3. :func:`attention_fields_for_batch` — the per-token coefficients ``c_t`` and gate mask
   the actor engines need for L_attn, from ν̃, the POS gate, failures and |Â|;
4. :func:`relevance_metrics` — the ``mapo/*`` numbers for the tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from mapo_verl.core import (
    attention_token_coefficients,
    fold_relevance_into_advantages,
    position_metrics,
    relevance_weights,
    sums_by_decile,
)
from mapo_verl.core.checks import as_bool_mask, check_per_sequence
from mapo_verl.core.contract import AUDIO_LABEL, DELTA_H_METRIC, SAMPLE_FRAC_STEM, modality_metric

if TYPE_CHECKING:  # the config module imports veRL; this one does not
    from mapo_verl.config import MAPOConfig

__all__ = [
    "BatchRelevance",
    "relevance_for_batch",
    "folded_advantages",
    "sequence_advantage_magnitude",
    "attention_fields_for_batch",
    "relevance_metrics",
]


@dataclass
class BatchRelevance:
    """What the ablated pass tells about one batch (all ``[B, T]`` unless noted)."""

    delta_h: torch.Tensor  # H_abl − H_pol, float32, zero outside the mask
    omega: torch.Tensor  # ω̃ (≡ 1 on valid tokens of rows without audio)
    nu: torch.Tensor  # ν̃ (0 on rows without audio)
    response_mask: torch.Tensor  # bool
    has_audio: torch.Tensor  # bool [B]
    pos_gate: torch.Tensor | None  # bool, or None (all tokens gated)


def relevance_for_batch(
    entropy_policy: torch.Tensor,
    entropy_ablated: torch.Tensor,
    response_mask: torch.Tensor,
    has_audio: torch.Tensor,
    config: MAPOConfig,
    *,
    pos_gate: torch.Tensor | None = None,
) -> BatchRelevance:
    """ω̃ and ν̃ (docs/DESIGN.md "The method") for a padded batch; rows without audio get ω̃ ≡ 1 and ν̃ ≡ 0."""
    mask = as_bool_mask(response_mask, "response_mask")
    audio = as_bool_mask(check_per_sequence(has_audio, "has_audio", mask.shape[0]), "has_audio")
    omega, nu = relevance_weights(
        entropy_policy, entropy_ablated, mask, tau_base=config.tau_base, cap=config.mask_cap, pos_gate=pos_gate
    )
    rows = audio.unsqueeze(-1)
    omega = torch.where(rows, omega, mask.to(omega.dtype))
    nu = torch.where(rows, nu, torch.zeros_like(nu))
    delta_h = torch.where(mask, entropy_ablated.float() - entropy_policy.float(), torch.zeros_like(omega))
    return BatchRelevance(delta_h=delta_h, omega=omega, nu=nu, response_mask=mask, has_audio=audio,
                          pos_gate=None if pos_gate is None else as_bool_mask(pos_gate, "pos_gate", mask.shape))


def folded_advantages(relevance: BatchRelevance, grpo_advantages: torch.Tensor, response_mask: torch.Tensor,
                      loss_agg_mode: str, *, attention_only: bool = False) -> torch.Tensor:
    """The advantages the actor trains on: GRPO's with ω̃ folded in for ``loss_agg_mode`` over
    ``response_mask`` (the batch's, after veRL's advantage step); exactly 0 with ``attention_only``
    (the PG term at zero weight, docs/DESIGN.md)."""
    if relevance.omega.shape != grpo_advantages.shape:
        raise ValueError(
            f"relevance weights have shape {tuple(relevance.omega.shape)} but the batch's advantages "
            f"{tuple(grpo_advantages.shape)}: the ablated pass and the advantage step saw different batches"
        )
    folded = fold_relevance_into_advantages(grpo_advantages, relevance.omega.to(grpo_advantages.device),
                                            response_mask, loss_agg_mode=loss_agg_mode)
    return folded * 0.0 if attention_only else folded


def sequence_advantage_magnitude(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``|Â_g|`` per sequence from token-level outcome advantages (constant over a row's tokens)."""
    mask = as_bool_mask(response_mask, "response_mask")
    return torch.where(mask, advantages.abs(), torch.zeros_like(advantages)).amax(dim=-1)


def attention_fields_for_batch(
    relevance: BatchRelevance,
    grpo_advantages: torch.Tensor,
    task_failed: torch.Tensor,
    config: MAPOConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_t, gate mask)`` for the actor update; rows without audio carry no attention loss."""
    attention = config.attention
    coefficients, gated = attention_token_coefficients(
        relevance.response_mask,
        relevance.nu,
        pos_gate=relevance.pos_gate,
        task_failed=task_failed,
        adv_abs=sequence_advantage_magnitude(grpo_advantages, relevance.response_mask),
        kappa=attention.kappa,
        fail_floor=attention.fail_floor,
        adv_floor=attention.advantage_floor_eps,
        pref_cap=attention.pref_cap,
    )
    gated = gated & relevance.has_audio.unsqueeze(-1)
    return torch.where(gated, coefficients, torch.zeros_like(coefficients)), gated


OMEGA_HIST_BINS = 10


def histogram_metrics(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """Fractions of ``values`` in ``OMEGA_HIST_BINS`` equal bins over their own range ``[lower, upper]``
    (the last bin is closed), and the range: bins that fit the data, however narrow its spread."""
    values = values.double()
    lower, upper = float(values.min()), float(values.max())
    width = max(upper - lower, 1e-300)
    bins = ((values - lower) / width * OMEGA_HIST_BINS).floor().clamp(0, OMEGA_HIST_BINS - 1).long()
    counts = torch.bincount(bins, minlength=OMEGA_HIST_BINS).double() / max(values.numel(), 1)
    metrics = {f"{prefix}/bin_{k}": float(counts[k]) for k in range(OMEGA_HIST_BINS)}
    metrics.update({f"{prefix}/lower": lower, f"{prefix}/upper": upper})
    return metrics


def relevance_metrics(relevance: BatchRelevance, cap: float, label: str = AUDIO_LABEL) -> dict[str, float]:
    """``mapo/*`` metrics of one batch: the share of rows holding the modalities
    (``mapo/<label>_sample_frac``, ``label`` from :func:`mapo_verl.modalities.metric_label`), Δh, ω̃
    and ν̃ statistics (``mask_clip_frac``: share of ω̃ at C_mask), the Δh collapse curve by decile."""
    metrics = {modality_metric(label, SAMPLE_FRAC_STEM): float(relevance.has_audio.float().mean())}
    audio_tokens = relevance.response_mask & relevance.has_audio.unsqueeze(-1)
    if not bool(audio_tokens.any()):
        return metrics
    omega = relevance.omega[audio_tokens]
    delta = relevance.delta_h[audio_tokens]
    metrics.update(
        {
            f"{DELTA_H_METRIC}_mean": float(delta.mean()),
            "mapo/abs_delta_h_mean": float(delta.abs().mean()),
            "mapo/omega_min": float(omega.min()),
            "mapo/omega_mean": float(omega.mean()),
            "mapo/omega_max": float(omega.max()),
            "mapo/mask_clip_frac": float((omega >= cap).float().mean()) if cap > 0 else 0.0,
        }
    )
    # ν̃ lives on the gated tokens (all valid tokens without a POS gate), as the attention branch reads it
    nu_tokens = audio_tokens if relevance.pos_gate is None else audio_tokens & relevance.pos_gate
    if bool(nu_tokens.any()):
        nu = relevance.nu[nu_tokens]
        metrics.update({"mapo/nu_tilde_min": float(nu.min()), "mapo/nu_tilde_mean": float(nu.mean()),
                        "mapo/nu_tilde_max": float(nu.max())})
    metrics.update(histogram_metrics("mapo/omega_hist", omega))
    if relevance.pos_gate is not None:
        metrics["mapo/pos_gate_frac"] = float(relevance.pos_gate[audio_tokens].float().mean())
    metrics.update(position_metrics(DELTA_H_METRIC, *sums_by_decile(relevance.delta_h, audio_tokens)))
    return metrics
