"""Per-token weights of MAPO (docs/DESIGN.md "The method"): relevance ω̃, inverse relevance ν̃, temporal (t/T)^κ.

All functions take right-aligned response tensors of shape ``[B, T]`` (veRL's
``responses`` layout) together with the response mask, and return ``float32`` tensors
that are exactly zero outside the mask. Internally they compute in ``float64``, so bf16 or
very large entropies neither overflow nor lose the ordering of tokens.
"""

from __future__ import annotations

import math

import torch

from mapo_verl.core.checks import as_bool_mask, check_finite_where, check_same_shape

__all__ = ["relevance_weights", "temporal_weights", "length_scaled_temperature"]


def _check_2d(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, response_length], got {tuple(tensor.shape)}")


def length_scaled_temperature(lengths: torch.Tensor, tau_base: float) -> torch.Tensor:
    """τ_T = τ_base · log(max(T_g, 2)) per row (docs/DESIGN.md "The method"), in float64.

    ``max(T, 2)`` keeps τ_T > 0 for one-token responses (log 1 = 0 would divide by zero).
    """
    return tau_base * torch.log(lengths.to(torch.float64).clamp(min=2.0))


def _scaled_capped_softmax(scores: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(N · softmax(scores over mask), cap)`` per row, N = number of masked tokens.

    Rows without a masked token give all zeros (the softmax over an empty set is undefined
    and such rows carry no loss anyway).
    """
    count = mask.sum(dim=-1, keepdim=True).to(scores.dtype)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    weights = torch.where(mask, count * probs, torch.zeros_like(probs))
    if cap > 0:
        weights = weights.clamp(max=cap)
    return weights


def relevance_weights(
    entropy_policy: torch.Tensor,
    entropy_ablated: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    tau_base: float = 1.0,
    cap: float = 5.0,
    pos_gate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modality relevance weights ω̃ and inverse weights ν̃ (docs/DESIGN.md "The method").

    With ``r_t = |H_abl(t) − H_pol(t)|`` (detached) and ``τ_T = τ_base·log(max(T_g, 2))``:

    - ``ω̃_t = min(T_g · softmax_t(r_t / τ_T), C_mask)`` over the valid response tokens;
    - ``ν̃_t = min(N_pos · softmax_t(−r_t / τ_T), C_mask)`` over the POS-gated tokens, with
      ``N_pos`` the number of gated tokens of the row. ν̃ is large where the audio matters
      least: the attention penalty falls on content tokens that stopped listening.

    Args:
        entropy_policy: ``H_pol`` ``[B, T]``, the policy's entropy with the audio.
        entropy_ablated: ``H_abl`` ``[B, T]``, the reference's entropy without the audio.
        response_mask: ``[B, T]`` 0/1 mask of valid response tokens (T_g = its row sums).
        tau_base: τ_base > 0.
        cap: C_mask; ``cap <= 0`` means no cap.
        pos_gate: optional ``[B, T]`` 0/1 part-of-speech gate; ν̃ is computed over
            ``pos_gate ∧ response_mask``. ``None`` gates every response token.

    Returns:
        ``(omega, nu)``: two float32 ``[B, T]`` tensors, zero outside the response mask
        (ν̃ also zero outside the POS gate), without gradient.

    Raises:
        ValueError: on shape mismatch, non-0/1 masks, NaN/inf entropies at valid positions,
            or a non-positive / non-finite τ_base.
    """
    _check_2d(response_mask, "response_mask")
    mask = as_bool_mask(response_mask, "response_mask")
    check_same_shape(mask, "response_mask", entropy_policy=entropy_policy, entropy_ablated=entropy_ablated)
    check_finite_where(entropy_policy, mask, "entropy_policy")
    check_finite_where(entropy_ablated, mask, "entropy_ablated")
    if not (math.isfinite(tau_base) and tau_base > 0):
        raise ValueError(f"tau_base must be a finite number > 0, got {tau_base}")
    if not math.isfinite(cap):
        raise ValueError(f"cap must be finite (use cap <= 0 for no cap), got {cap}")
    gate = mask if pos_gate is None else mask & as_bool_mask(pos_gate, "pos_gate", mask.shape)

    delta = entropy_ablated.detach().to(torch.float64) - entropy_policy.detach().to(torch.float64)
    relevance = torch.where(mask, delta.abs(), torch.zeros_like(delta))
    tau = length_scaled_temperature(mask.sum(dim=-1), tau_base).unsqueeze(-1)
    scaled = relevance / tau
    omega = _scaled_capped_softmax(scaled, mask, cap)
    nu = _scaled_capped_softmax(-scaled, gate, cap)
    return omega.to(torch.float32), nu.to(torch.float32)


def temporal_weights(response_mask: torch.Tensor, *, kappa: float = 1.0) -> torch.Tensor:
    """Temporal scale ``(t / T_g)^κ`` of the attention loss.

    ``t = 1..T_g`` counts the valid tokens of each row in order (so padding or masked
    tokens inside a row do not advance the clock), and ``T_g`` is the row's number of
    valid tokens. ``κ = 0`` gives ones (no temporal scaling); the method's setting is κ ≥ 1.

    Returns:
        float32 ``[B, T]``, zero outside the mask.
    """
    _check_2d(response_mask, "response_mask")
    mask = as_bool_mask(response_mask, "response_mask")
    if not (math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa must be a finite number >= 0, got {kappa}")
    position = torch.cumsum(mask.to(torch.float64), dim=-1)
    length = mask.sum(dim=-1, keepdim=True).to(torch.float64).clamp(min=1.0)
    weights = torch.where(mask, (position / length) ** kappa, torch.zeros_like(position))
    return weights.to(torch.float32)
