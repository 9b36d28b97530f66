"""Collapse diagnostics: per-token quantities by relative response position.

Late-stage modality collapse shows as Δh (audio dependence) and the audio attention mass
falling with the relative position t/T_g. These helpers bin the valid tokens of each row
into position deciles and return sums and counts, so distributed callers can add them
across ranks before dividing.
"""

from __future__ import annotations

import torch

from mapo_verl.core.checks import as_bool_mask

__all__ = ["NUM_DECILES", "LATE_EARLY_DECILES", "position_deciles", "sums_by_decile", "decile_metrics",
           "late_early_ratio"]

NUM_DECILES = 10
# late/early ratios compare the last and the first 20 % of response positions
LATE_EARLY_DECILES = 2


def position_deciles(response_mask: torch.Tensor) -> torch.Tensor:
    """Decile 0..9 of each valid token's relative position ``(t − 1) / T_g``; −1 outside the mask."""
    mask = as_bool_mask(response_mask, "response_mask")
    position = torch.cumsum(mask.to(torch.int64), dim=-1) - 1
    length = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    decile = torch.div(position * NUM_DECILES, length, rounding_mode="floor")
    return torch.where(mask, decile, torch.full_like(decile, -1))


def sums_by_decile(values: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)`` of ``values`` over valid tokens per position decile (float64, shape [10])."""
    decile = position_deciles(response_mask)
    valid = decile >= 0
    sums = torch.zeros(NUM_DECILES, dtype=torch.float64, device=values.device)
    counts = torch.zeros(NUM_DECILES, dtype=torch.float64, device=values.device)
    sums.index_add_(0, decile[valid], values.detach()[valid].to(torch.float64))
    counts.index_add_(0, decile[valid], torch.ones_like(sums[:1]).expand(int(valid.sum())))
    return sums, counts


def decile_metrics(prefix: str, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """``{prefix}/decile_k`` means for the deciles that hold tokens (empty deciles are omitted)."""
    return {
        f"{prefix}/decile_{k}": float(sums[k] / counts[k]) for k in range(NUM_DECILES) if float(counts[k]) > 0
    }


def late_early_ratio(sums: torch.Tensor, counts: torch.Tensor) -> float | None:
    """Mean over the last :data:`LATE_EARLY_DECILES` deciles over the mean of the first ones.

    Below 1: late response tokens carry less of the quantity than early ones (collapse).
    ``None`` when either window is empty or the early mean is 0.
    """
    window = LATE_EARLY_DECILES
    early_n, late_n = counts[:window].sum(), counts[-window:].sum()
    if float(early_n) == 0 or float(late_n) == 0:
        return None
    early = sums[:window].sum() / early_n
    if float(early) == 0:
        return None
    return float((sums[-window:].sum() / late_n) / early)
