"""The attention-loss branch of MAPO (docs/DESIGN.md "The method"), without η.

``L_attn = (1/G) Σ_g gate_g · (1/N_pos,g) Σ_t (t/T_g)^κ · ν̃_t · pos_t · (−log(a_t + ε))``

The objective is split in two so that the expensive part runs where the attention is:

- :func:`attention_token_coefficients` — everything but ``a_t``, computed once per batch
  on the trainer (``c_t = gate_g · (t/T_g)^κ · ν̃_t · pos_t`` and the gated-token mask);
- :func:`attention_objective_from_coefficients` — ``−log(a_t + ε)`` weighted by ``c_t`` and
  reduced with the actor's ``loss_agg_mode``, run by the engine on every micro-batch.

:func:`attention_objective` composes the two (the public, self-contained form).
"""

from __future__ import annotations

import math

import torch

from mapo_verl.core.aggregation import aggregate_token_losses, check_loss_agg_mode
from mapo_verl.core.checks import (
    as_bool_mask,
    check_finite_where,
    check_per_sequence,
    check_same_shape,
    first_rows,
)
from mapo_verl.core.weights import temporal_weights

__all__ = [
    "sequence_gate",
    "attention_token_coefficients",
    "attention_objective_from_coefficients",
    "attention_objective",
]


def _check_non_negative(value: float, name: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def sequence_gate(
    batch_size: int,
    *,
    task_failed: torch.Tensor | None = None,
    adv_abs: torch.Tensor | None = None,
    fail_floor: float = 0.0,
    adv_floor: float = 0.0,
    pref_cap: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sequence preference gate ``gate_g = min(f̂_g · |Â_g|, C_pref)`` (docs/DESIGN.md "The method").

    - ``f̂_g = max(fail_g, fail_floor)``, ``fail_g = 1`` when the response's task reward is
      ≤ 0. Without ``task_failed`` every response counts as failed (``f̂ ≡ 1``): the gate
      then does not discriminate on success.
    - ``|Â_g|`` is floored at ``adv_floor`` for failed responses; without ``adv_abs`` it is 1.
    - ``pref_cap = 0`` means no cap.

    Returns:
        float64 ``[batch_size]``.
    """
    for value, name in ((fail_floor, "fail_floor"), (adv_floor, "adv_floor"), (pref_cap, "pref_cap")):
        _check_non_negative(value, name)
    check_per_sequence(task_failed, "task_failed", batch_size)
    check_per_sequence(adv_abs, "adv_abs", batch_size)
    failed = (
        torch.ones(batch_size, dtype=torch.bool, device=device)
        if task_failed is None
        else as_bool_mask(task_failed, "task_failed")
    )
    magnitude = torch.ones(batch_size, dtype=torch.float64, device=failed.device)
    if adv_abs is not None:
        magnitude = adv_abs.detach().to(torch.float64)
        bad = ~torch.isfinite(magnitude) | (magnitude < 0)
        if bool(bad.any()):
            raise ValueError(f"adv_abs must be finite and >= 0; rows {first_rows(bad)} are not")
        magnitude = torch.where(failed, magnitude.clamp(min=adv_floor), magnitude)
    fail_weight = failed.to(torch.float64).clamp(min=fail_floor)
    gate = fail_weight * magnitude
    if pref_cap > 0:
        gate = gate.clamp(max=pref_cap)
    return gate


def attention_token_coefficients(
    response_mask: torch.Tensor,
    nu: torch.Tensor,
    *,
    pos_gate: torch.Tensor | None = None,
    task_failed: torch.Tensor | None = None,
    adv_abs: torch.Tensor | None = None,
    kappa: float = 1.0,
    fail_floor: float = 0.0,
    adv_floor: float = 0.0,
    pref_cap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token coefficients ``c_t = gate_g · (t/T_g)^κ · ν̃_t · pos_t`` and the gated mask.

    Returns:
        ``(coefficients, gated_mask)``: float32 ``[B, T]`` (zero outside the mask) and the
        bool ``[B, T]`` mask ``pos_gate ∧ response_mask`` over which ``N_pos,g`` counts.
    """
    if not isinstance(response_mask, torch.Tensor) or response_mask.dim() != 2:
        raise ValueError("response_mask must be a [batch, response_length] tensor")
    mask = as_bool_mask(response_mask, "response_mask")
    check_same_shape(mask, "response_mask", nu=nu)
    check_finite_where(nu, mask, "nu")
    gated = mask if pos_gate is None else mask & as_bool_mask(pos_gate, "pos_gate", mask.shape)
    gate = sequence_gate(
        mask.shape[0],
        task_failed=task_failed,
        adv_abs=adv_abs,
        fail_floor=fail_floor,
        adv_floor=adv_floor,
        pref_cap=pref_cap,
        device=mask.device,
    )
    temporal = temporal_weights(mask, kappa=kappa).to(torch.float64)
    coefficients = gate.unsqueeze(-1) * temporal * nu.detach().to(torch.float64)
    coefficients = torch.where(gated, coefficients, torch.zeros_like(coefficients))
    return coefficients.to(torch.float32), gated


def attention_objective_from_coefficients(
    audio_mass: torch.Tensor,
    coefficients: torch.Tensor,
    gated_mask: torch.Tensor,
    *,
    eps: float = 1e-6,
    loss_agg_mode: str = "seq-mean-token-mean",
    num_sequences: int | float | torch.Tensor | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    horizon: int | float | None = None,
    dp_size: int = 1,
) -> torch.Tensor:
    """``agg(c_t · (−log(a_t + ε)))`` over the gated tokens; differentiable in ``a``.

    With ``loss_agg_mode="seq-mean-token-mean"`` this is the method's ``(1/G) Σ_g (1/N_pos,g)
    Σ_t …``; the batch-normalised modes divide the gated-token sum by the number of gated
    tokens (``token-mean``) or keep the mode's own scale. The optional normalisers are the
    global-batch values of a distributed caller (see :func:`aggregate_token_losses`); by
    default ``G`` counts the rows of ``coefficients`` that hold a gated token.

    Raises:
        ValueError: NaN/inf masses, or ``a_t + ε <= 0``, at gated positions.
    """
    check_loss_agg_mode(loss_agg_mode)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    check_same_shape(gated_mask, "gated_mask", audio_mass=audio_mass, coefficients=coefficients)
    mass = audio_mass.detach()
    # One host sync per call on the hot path; the detailed checks run only on bad input.
    if bool((gated_mask & ~(torch.isfinite(mass) & (mass + eps > 0))).any()):
        check_finite_where(mass, gated_mask, "audio_mass")
        too_small = gated_mask & (mass + eps <= 0)
        raise ValueError(f"audio_mass + eps must be > 0; rows {first_rows(too_small.any(dim=-1))} are not")
    safe_mass = torch.where(gated_mask, audio_mass, torch.ones_like(audio_mass))
    token_losses = coefficients.to(audio_mass.dtype) * -torch.log(safe_mass + eps)
    return aggregate_token_losses(
        token_losses,
        gated_mask,
        loss_agg_mode,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        horizon=horizon,
        dp_size=dp_size,
    )


def attention_objective(
    audio_mass: torch.Tensor,
    response_mask: torch.Tensor,
    nu: torch.Tensor,
    *,
    pos_gate: torch.Tensor | None = None,
    task_failed: torch.Tensor | None = None,
    adv_abs: torch.Tensor | None = None,
    kappa: float = 1.0,
    eps: float = 1e-6,
    fail_floor: float = 0.0,
    adv_floor: float = 0.0,
    pref_cap: float = 0.0,
    loss_agg_mode: str = "seq-mean-token-mean",
) -> torch.Tensor:
    """MAPO's attention loss ``L_attn`` (docs/DESIGN.md "The method") (without the weight η).

    ``L_attn = (1/G) Σ_g gate_g · (1/N_pos,g) Σ_t (t/T_g)^κ · ν̃_t · pos_t · (−log(a_t + ε))``

    Args:
        audio_mass: ``a_t`` ``[B, T]``: the attention mass of response token t on audio keys,
            already reduced over heads and layers; gradients flow through it.
        response_mask: ``[B, T]`` 0/1 valid-response mask (``T_g`` = row sums).
        nu: ν̃ ``[B, T]`` from :func:`relevance_weights`.
        pos_gate: ``[B, T]`` 0/1 part-of-speech gate (``None`` = all ones).
        task_failed: ``[B]`` 1 where the task reward is ≤ 0 (``None`` = all failed).
        adv_abs: ``[B]`` ``|Â_g|`` (``None`` = 1).
        kappa, eps, fail_floor, adv_floor, pref_cap: κ, ε, floor, advantage_floor_eps, C_pref.
        loss_agg_mode: ``seq-mean-token-mean`` is the method's formula; see
            :func:`attention_objective_from_coefficients` for the others.

    Returns:
        a scalar tensor in ``audio_mass``' dtype. ``G`` counts the rows with at least one
        valid response token; a row without gated tokens contributes 0.
    """
    coefficients, gated = attention_token_coefficients(
        response_mask,
        nu,
        pos_gate=pos_gate,
        task_failed=task_failed,
        adv_abs=adv_abs,
        kappa=kappa,
        fail_floor=fail_floor,
        adv_floor=adv_floor,
        pref_cap=pref_cap,
    )
    num_sequences = as_bool_mask(response_mask, "response_mask").any(dim=-1).sum().clamp(min=1)
    return attention_objective_from_coefficients(
        audio_mass, coefficients, gated, eps=eps, loss_agg_mode=loss_agg_mode, num_sequences=num_sequences
    )
