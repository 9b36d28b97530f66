"""The ``mapo`` advantage: GRPO's advantages (veRL's own, per session) with ω̃ folded in.

veRL calls a registered estimator with rewards, mask and group index only, but ω̃ comes from the
audio-ablated pass, which only the MAPO trainer runs. So the data flows one way, through the batch:
the MAPO trainer runs veRL's advantage step as GRPO (:func:`grpo_advantage_step`), reads GRPO's
advantages back from the batch, folds ω̃ in (:func:`mapo_verl.batch_relevance.folded_advantages`) and writes
them. GRPO's path includes veRL's multi-output agent loops (the final output of each
``{uid}_{session}`` is normalised within its group and broadcast to the session's other outputs),
which veRL applies only when ``adv_estimator == grpo``.

The estimator registered under ``mapo`` only refuses: choosing ``adv_estimator=mapo`` with veRL's
stock trainer fails naming the setting that enables it, never a silent fall-back to GRPO.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, open_dict
from verl.trainer.ppo import core_algos

from mapo_verl.core.contract import MAPO_ESTIMATOR

__all__ = ["MissingRelevanceError", "grpo_advantage_step", "compute_mapo_outcome_advantage"]


class MissingRelevanceError(RuntimeError):
    """``adv_estimator=mapo`` ran without the MAPO trainer (no ablated-pass weights)."""


@contextmanager
def grpo_advantage_step(config: DictConfig) -> Iterator[None]:
    """Within the block, veRL's advantage step computes GRPO (its session-aware path) for a ``mapo`` run."""
    algorithm = config.algorithm
    estimator = algorithm.adv_estimator
    if estimator != MAPO_ESTIMATOR:
        raise ValueError(f"the MAPO trainer runs with algorithm.adv_estimator={MAPO_ESTIMATOR}, got {estimator!r}")
    with open_dict(algorithm):
        algorithm.adv_estimator = core_algos.AdvantageEstimator.GRPO.value
    try:
        yield
    finally:
        with open_dict(algorithm):
            algorithm.adv_estimator = estimator


@core_algos.register_adv_est(MAPO_ESTIMATOR)
def compute_mapo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                                   config: Any = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Refuses: the ``mapo`` advantage is computed by the MAPO trainer (module docstring)."""
    raise MissingRelevanceError(
        "algorithm.adv_estimator=mapo needs the audio-ablated entropies, which only the MAPO trainer "
        "computes: set trainer.v1.trainer_mode=mapo (the recipes in recipes/ do)"
    )
