"""The ``mapo`` advantage estimator: GRPO's advantages with ω̃ folded in.

veRL calls a registered estimator with rewards, mask and group index only; ω̃ comes from
the audio-ablated pass, which only the MAPO trainer runs. The trainer therefore provides
the weights for the duration of its advantage step (:func:`provide_relevance`), and the
estimator refuses to run without them: choosing ``adv_estimator=mapo`` with veRL's stock
trainer fails with the setting that enables it, never a silent fall-back to GRPO.

Multi-output agent loops: veRL's v1 trainer groups GRPO by session (the final output of each
``{uid}_{session}`` is normalised within its group and broadcast to the session's other outputs)
only when ``adv_estimator == grpo``. The MAPO trainer hands the batch keys over, and the estimator
runs veRL's own session-aware GRPO on them, so ``mapo`` takes the same path.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
from verl.trainer.ppo import core_algos

from mapo_verl.core import fold_relevance_into_advantages
from mapo_verl.core.contract import MAPO_ESTIMATOR

__all__ = ["RelevanceInputs", "provide_relevance", "compute_mapo_outcome_advantage"]


class MissingRelevanceError(RuntimeError):
    """``adv_estimator=mapo`` ran without the ablated-pass weights."""


@dataclass
class RelevanceInputs:
    """What the MAPO trainer hands the estimator for one batch (rows in batch order).

    ``grpo_advantages`` is filled in by the estimator: the attention branch's gate needs
    ``|Â|`` before ω̃ is folded in.
    """

    omega: torch.Tensor
    loss_agg_mode: str
    batch_keys: list[str] | None = None  # veRL's ``{uid}_{session}_{index}`` row keys, in batch order
    pg_weight: float = 1.0  # 0 in attention-only mode: the PG term is kept at zero weight
    grpo_advantages: torch.Tensor | None = None


_ACTIVE_RELEVANCE: ContextVar[RelevanceInputs | None] = ContextVar("mapo_active_relevance", default=None)


@contextmanager
def provide_relevance(inputs: RelevanceInputs) -> Iterator[RelevanceInputs]:
    """Make ``inputs`` visible to the ``mapo`` estimator within the block."""
    token = _ACTIVE_RELEVANCE.set(inputs)
    try:
        yield inputs
    finally:
        _ACTIVE_RELEVANCE.reset(token)


def _session_grpo_advantages(token_level_rewards, response_mask, index, batch_keys, norm_by_std, config):
    """GRPO advantages through veRL's multi-output (per-session) path, exactly as for ``adv_estimator=grpo``."""
    import numpy as np
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    if len(batch_keys) != token_level_rewards.shape[0]:
        raise ValueError(f"{len(batch_keys)} batch keys for {token_level_rewards.shape[0]} rows: the MAPO trainer must "
                         "hand over the keys of the batch the advantages are computed for")
    data = DataProto.from_dict(
        tensors={"token_level_rewards": token_level_rewards, "response_mask": response_mask},
        non_tensors={"uid": np.asarray(index, dtype=object)},
    )
    data = compute_advantage_for_multi_trajectories(
        data, batch_keys=list(batch_keys), adv_estimator=core_algos.AdvantageEstimator.GRPO,
        norm_adv_by_std_in_grpo=norm_by_std, config=config,
    )
    return data.batch["advantages"], data.batch["returns"]


@core_algos.register_adv_est(MAPO_ESTIMATOR)
def compute_mapo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index,
    config=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantages (veRL's own function) re-weighted by ω̃ (docs/DESIGN.md "The method").

    Returns ``(advantages, returns)``; ``returns`` are GRPO's, unweighted.
    """
    inputs = _ACTIVE_RELEVANCE.get()
    if inputs is None:
        raise MissingRelevanceError(
            "algorithm.adv_estimator=mapo needs the audio-ablated entropies, which only the MAPO trainer "
            "computes: set trainer.v1.trainer_mode=mapo (the recipes in recipes/ do)"
        )
    norm_by_std = config.get("norm_adv_by_std_in_grpo", True) if config is not None else True
    if inputs.batch_keys is None:
        advantages, returns = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            norm_adv_by_std_in_grpo=norm_by_std,
        )
    else:
        advantages, returns = _session_grpo_advantages(
            token_level_rewards, response_mask, index, inputs.batch_keys, norm_by_std, config
        )
    if inputs.omega.shape != advantages.shape:
        raise ValueError(
            f"relevance weights have shape {tuple(inputs.omega.shape)} but the batch's advantages "
            f"{tuple(advantages.shape)}: the ablated pass and the advantage step saw different batches"
        )
    inputs.grpo_advantages = advantages
    folded = fold_relevance_into_advantages(
        advantages, inputs.omega.to(advantages.device), response_mask, loss_agg_mode=inputs.loss_agg_mode
    )
    if inputs.pg_weight != 1.0:
        folded = folded * inputs.pg_weight
    return folded, returns
