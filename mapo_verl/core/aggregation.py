"""Loss aggregation modes and how ω̃ folds into veRL's token-level advantages (docs/DESIGN.md "The method", "ω̃ enters through the advantages").

veRL reduces a token-loss matrix with one of five ``loss_agg_mode`` values. MAPO's
weighted policy-gradient loss ``Σ ω̃ ℓ / Σ ω̃`` has one weighted form per mode:

- ``seq-mean-token-mean`` (GRPO): per sequence ``Σ_t ω̃_t ℓ_t / Σ_t ω̃_t``, then the mean
  over sequences. *Per-sequence normalisation.*
- ``token-mean`` (DAPO / BNPO), ``token-sum``, ``seq-mean-token-sum``,
  ``seq-mean-token-sum-norm`` (Dr.GRPO): every token weighs the same across the batch, so
  the token average ``Σ ℓ / N`` becomes ``Σ ω̃ ℓ / Σ ω̃`` over the batch, keeping the
  mode's own scale (``N``, the sequence count, the horizon). *Batch normalisation.*

Because veRL's clipped PPO token loss is positively homogeneous in the advantage
(``ℓ(w·A) = w·ℓ(A)`` for ``w ≥ 0``, dual clip included), these weighted losses are
obtained exactly by handing veRL's own ``vanilla`` loss the advantages
``A_t · ω̃_t · n / s``, where ``n / s`` is the normaliser of the mode (``T_g / Σ_t ω̃`` per
sequence, or ``N / Σ ω̃`` over the batch).
"""

from __future__ import annotations

import torch

from mapo_verl.core.checks import as_bool_mask, check_finite_where, check_same_shape, first_rows

__all__ = [
    "LOSS_AGG_MODES",
    "PER_SEQUENCE_MODES",
    "BATCH_NORMALISED_MODES",
    "check_loss_agg_mode",
    "fold_relevance_into_advantages",
    "aggregate_token_losses",
]

PER_SEQUENCE_MODES = ("seq-mean-token-mean",)
BATCH_NORMALISED_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LOSS_AGG_MODES = PER_SEQUENCE_MODES + BATCH_NORMALISED_MODES


def check_loss_agg_mode(loss_agg_mode: str) -> str:
    """Return ``loss_agg_mode`` if it is one of veRL's modes, else raise naming the choices."""
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {list(LOSS_AGG_MODES)}, got {loss_agg_mode!r}")
    return loss_agg_mode


def fold_relevance_into_advantages(
    advantages: torch.Tensor,
    omega: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_agg_mode: str = "seq-mean-token-mean",
) -> torch.Tensor:
    """Token-level advantages whose veRL ``vanilla`` loss is MAPO's ω̃-weighted loss.

    - ``seq-mean-token-mean``: ``A'_t = A_t · ω̃_t · T_g / Σ_t ω̃_t`` — veRL's per-sequence
      token mean ``Σ_t ℓ(A'_t) / T_g`` equals ``Σ_t ω̃_t ℓ_t / Σ_t ω̃_t`` exactly.
    - batch-normalised modes: ``A'_t = A_t · ω̃_t · N / Σ ω̃`` with ``N`` the number of valid
      tokens and ``Σ ω̃`` over the whole tensor passed in: veRL's mode applied to ``A'``
      equals the mode's scale times ``Σ ω̃ ℓ / Σ ω̃``. The normaliser is taken over the batch
      given here (the trainer passes the step batch); when veRL splits a step into several
      PPO mini-batches, each mini-batch is weighted by the step batch's mean ω̃.

    With ω̃ ≡ 1 the factor is exactly 1.0 and the advantages come back bit-identical.
    Positions outside the response mask are returned unchanged (veRL masks them).

    Args:
        advantages: ``[B, T]`` advantages (e.g. GRPO's).
        omega: ``[B, T]`` weights ω̃ ≥ 0, finite at valid positions.
        response_mask: ``[B, T]`` 0/1 mask.
        loss_agg_mode: the actor's ``loss_agg_mode``.

    Returns:
        a ``[B, T]`` tensor of ``advantages``' dtype.
    """
    check_loss_agg_mode(loss_agg_mode)
    if not isinstance(response_mask, torch.Tensor) or response_mask.dim() != 2:
        raise ValueError("response_mask must be a [batch, response_length] tensor")
    mask = as_bool_mask(response_mask, "response_mask")
    check_same_shape(mask, "response_mask", advantages=advantages, omega=omega)
    check_finite_where(advantages, mask, "advantages")
    check_finite_where(omega, mask, "omega")
    weights = torch.where(mask, omega.to(torch.float64), torch.zeros((), dtype=torch.float64))
    negative = (weights < 0).any(dim=-1)
    if bool(negative.any()):
        raise ValueError(f"omega must be >= 0 (the PPO loss is homogeneous only for non-negative weights); "
                         f"rows {first_rows(negative)} hold negative values")
    counts = mask.sum(dim=-1).to(torch.float64)
    if loss_agg_mode in PER_SEQUENCE_MODES:
        totals = weights.sum(dim=-1)
        empty_weight = (counts > 0) & (totals <= 0)
        if bool(empty_weight.any()):
            raise ValueError(f"omega sums to 0 over the valid tokens of rows {first_rows(empty_weight)}")
        scale = (counts / torch.where(totals > 0, totals, torch.ones_like(totals))).unsqueeze(-1)
    else:
        total = weights.sum()
        if bool(counts.sum() > 0) and not bool(total > 0):
            raise ValueError("omega sums to 0 over the valid tokens of the batch")
        scale = counts.sum() / total if bool(total > 0) else torch.ones((), dtype=torch.float64)
    factor = torch.where(mask, weights * scale, torch.ones((), dtype=torch.float64))
    return (advantages.to(torch.float64) * factor).to(advantages.dtype)


def aggregate_token_losses(
    loss_mat: torch.Tensor,
    token_mask: torch.Tensor,
    loss_agg_mode: str,
    *,
    num_sequences: int | float | torch.Tensor | None = None,
    num_tokens: int | float | torch.Tensor | None = None,
    horizon: int | float | None = None,
    dp_size: int = 1,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` token-loss matrix to a scalar, with veRL's mode semantics.

    The normalisers default to the local batch (``num_tokens`` = masked tokens,
    ``num_sequences`` = rows with a masked token, ``horizon`` = ``T``). A distributed
    caller passes the global values and its data-parallel size so that, summed over
    micro-batches and averaged over ranks, the result is the global-batch loss and does
    not depend on how the batch was split (the contract of veRL's ``agg_loss``).

    - ``token-mean``: ``Σ loss / num_tokens``;
    - ``token-sum``: ``Σ loss``;
    - ``seq-mean-token-sum``: ``Σ_g Σ_t loss / num_sequences``;
    - ``seq-mean-token-sum-norm``: the same divided by ``horizon``;
    - ``seq-mean-token-mean``: ``Σ_g (Σ_t loss / n_g) / num_sequences``, rows with no masked
      token contribute 0.

    All results are multiplied by ``dp_size`` (gradients are averaged over ranks).
    """
    check_loss_agg_mode(loss_agg_mode)
    masked = torch.where(token_mask, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    # An all-masked local batch has a zero loss, not 0/0.
    if num_sequences is None:
        num_sequences = token_mask.any(dim=-1).sum().clamp(min=1)
    if loss_agg_mode == "token-mean":
        total = masked.sum() / (token_mask.sum().clamp(min=1) if num_tokens is None else num_tokens)
    elif loss_agg_mode == "token-sum":
        total = masked.sum()
    elif loss_agg_mode == "seq-mean-token-mean":
        per_row = masked.sum(dim=-1) / token_mask.sum(dim=-1).clamp(min=1)
        total = per_row.sum() / num_sequences
    else:
        total = masked.sum() / num_sequences
        if loss_agg_mode == "seq-mean-token-sum-norm":
            total = total / (loss_mat.shape[-1] if horizon is None else horizon)
    return total * dp_size
