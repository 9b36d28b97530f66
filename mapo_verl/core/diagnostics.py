"""Collapse diagnostics: per-token quantities by relative response position.

Late-stage modality collapse shows as Δh (audio dependence) and the audio attention mass
falling with the relative position t/T_g. These helpers bin the valid tokens of each row
into position deciles and return sums and counts, so distributed callers can add them
across ranks before dividing.

Raw mass falls with position even without collapse: a later query sees more keys, so its
uniform share of the A audio keys, ``A / N_t``, shrinks. :func:`audio_lift` divides it out
(``a_t · N_t / A``, 1 = uniform attention over the visible keys), as the authors' follow-up
analysis recommends.
"""

from __future__ import annotations

import torch

from mapo_verl.core.checks import as_bool_mask
from mapo_verl.core.contract import LATE_EARLY_SUFFIX

__all__ = ["NUM_DECILES", "LATE_EARLY_DECILES", "position_deciles", "sums_by_decile", "decile_metrics",
           "late_early_ratio", "position_metrics", "audio_lift"]

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


def position_metrics(prefix: str, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """The collapse curve of one quantity: ``{prefix}/decile_k`` and ``{prefix}/late_early_ratio`` (when defined)."""
    metrics = decile_metrics(prefix, sums, counts)
    ratio = late_early_ratio(sums, counts)
    if ratio is not None:
        metrics[f"{prefix}/{LATE_EARLY_SUFFIX}"] = ratio
    return metrics


def audio_lift(mass: torch.Tensor, response_mask: torch.Tensor, prompt_lengths: torch.Tensor,
               audio_keys: torch.Tensor) -> torch.Tensor:
    """Length-normalised audio mass ``a_t · N_t / A`` at response positions ``[B, T]`` (0 outside the mask).

    ``mass[g, t-1]`` is the audio mass of the query that predicts response token t (log-prob
    alignment), at 0-based sequence position ``P_g + t − 2`` of an unpadded causal sequence
    with a ``P_g``-token prompt, so it sees ``N_t = P_g + t − 1`` keys; ``A`` = ``audio_keys[g]``.
    Rows without audio keys get 0.
    """
    mask = as_bool_mask(response_mask, "response_mask")
    t = torch.arange(1, mask.shape[-1] + 1, device=mass.device, dtype=torch.float64)
    visible = prompt_lengths.to(device=mass.device, dtype=torch.float64)[:, None] + t - 1
    keys = audio_keys.to(device=mass.device, dtype=torch.float64)[:, None]
    lift = mass.detach().double() * visible / keys.clamp(min=1)
    return torch.where(mask & (keys > 0), lift, torch.zeros_like(lift))
