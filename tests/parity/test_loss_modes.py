"""Every veRL 0.9.1 policy-loss mode with MAPO: supported exactly, or refused at launch.

ω̃ enters through the advantages. For a loss mode whose token loss is positively homogeneous
in the advantage, veRL's loss on the folded advantages must equal the ω̃-weighted loss
``Σ ω̃ ℓ / Σ ω̃``. The oracle gets each token loss ℓ_t(A_t) from the mode itself, called with
the advantage of token t only (every other advantage 0, token-sum), and does the weighting
in Python floats. The other modes must be refused by the launch check, naming the key.
"""

import functools
import math

import pytest
import torch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn
from verl.workers.config import FSDPActorConfig, PolicyLossConfig

from mapo_verl.core import fold_relevance_into_advantages
from mapo_verl.verl_ext.validation import FIXED_AGG_MODES, FOLDABLE_LOSS_MODES, check_mapo_config
from tests.parity.launch import launch_config

UNFOLDABLE = ("geo_mean", "clip_cov", "kl_cov", "dro", "bypass_mode")


@functools.lru_cache(maxsize=None)
def actor_config(mode):
    return FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                           clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                           policy_loss=PolicyLossConfig(loss_mode=mode))


def batch(seed=0, rows=4, length=6):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    advantages = (torch.randn(rows, 1, generator=gen, dtype=torch.float64) * mask)
    old = -torch.rand(rows, length, generator=gen, dtype=torch.float64) * 2
    new = old + torch.randn(rows, length, generator=gen, dtype=torch.float64) * 0.5
    omega = torch.rand(rows, length, generator=gen, dtype=torch.float64) * 3 * mask
    return advantages, mask, old, new, omega


def loss_of(mode, advantages, mask, old, new, agg):
    loss, _ = get_policy_loss_fn(mode)(old, new, advantages, mask, loss_agg_mode=agg, config=actor_config(mode))
    return float(loss)


def sapo_token_losses(advantages, mask, old, new):
    """SAPO's ℓ_t written out (it always aggregates seq-mean-token-mean, so token-sum cannot isolate ℓ_t)."""
    config = actor_config("sapo")
    losses = []
    for g in range(mask.shape[0]):
        row = []
        for t in range(mask.shape[1]):
            a, ratio = float(advantages[g, t]), math.exp(float(new[g, t] - old[g, t]))
            tau = config.tau_pos if a > 0 else config.tau_neg
            row.append(-(4.0 / tau) / (1.0 + math.exp(-tau * (ratio - 1.0))) * a)
        losses.append(row)
    return losses


def token_losses(mode, advantages, mask, old, new):
    """ℓ_t(A_t) for every valid token: the mode's token-sum loss with only token t's advantage."""
    if mode == "sapo":
        return sapo_token_losses(advantages, mask, old, new)
    rows, length = mask.shape
    losses = [[0.0] * length for _ in range(rows)]
    for g in range(rows):
        for t in range(length):
            if mask[g, t]:
                single = torch.zeros_like(advantages)
                single[g, t] = advantages[g, t]
                losses[g][t] = loss_of(mode, single, mask, old, new, "token-sum")
    return losses


def test_every_registered_mode_is_classified():
    assert set(POLICY_LOSS_REGISTRY) == set(FOLDABLE_LOSS_MODES) | set(UNFOLDABLE)


@pytest.mark.parametrize("mode", FOLDABLE_LOSS_MODES)
def test_folded_advantages_give_the_weighted_loss(mode):
    advantages, mask, old, new, omega = batch()
    ell = token_losses(mode, advantages, mask, old, new)
    valid = mask.bool().tolist()
    w = omega.tolist()
    per_sequence = [sum(w[g][t] * ell[g][t] for t in range(6) if valid[g][t]) /
                    sum(w[g][t] for t in range(6) if valid[g][t]) for g in range(4)]
    want_grpo = sum(per_sequence) / 4
    folded = fold_relevance_into_advantages(advantages, omega, mask, loss_agg_mode="seq-mean-token-mean")
    assert loss_of(mode, folded, mask, old, new, "seq-mean-token-mean") == pytest.approx(want_grpo, rel=1e-7,
                                                                                         abs=1e-12)
    if mode in FIXED_AGG_MODES:
        return
    want_batch = sum(w[g][t] * ell[g][t] for g in range(4) for t in range(6) if valid[g][t]) / \
        sum(w[g][t] for g in range(4) for t in range(6) if valid[g][t])
    folded = fold_relevance_into_advantages(advantages, omega, mask, loss_agg_mode="token-mean")
    assert loss_of(mode, folded, mask, old, new, "token-mean") == pytest.approx(want_batch, rel=1e-7, abs=1e-12)


def test_geo_mean_would_silently_ignore_omega():
    advantages, mask, old, new, omega = batch()
    folded = fold_relevance_into_advantages(advantages, omega, mask, loss_agg_mode="seq-mean-token-mean")
    plain = loss_of("geo_mean", advantages, mask, old, new, "seq-mean-token-mean")
    assert loss_of("geo_mean", folded, mask, old, new, "seq-mean-token-mean") == pytest.approx(plain, rel=1e-9)


@pytest.mark.parametrize("mode", UNFOLDABLE)
def test_other_modes_are_refused_at_launch_naming_the_key(mode):
    with pytest.raises(ValueError, match=rf"actor_rollout_ref\.actor\.policy_loss\.loss_mode='{mode}'"):
        check_mapo_config(launch_config(mode))


@pytest.mark.parametrize("mode", FOLDABLE_LOSS_MODES)
def test_foldable_modes_pass_the_launch_check(mode):
    check_mapo_config(launch_config(mode))


def test_sapo_needs_the_per_sequence_fold():
    config = launch_config("sapo")
    config.actor_rollout_ref.actor.loss_agg_mode = "token-mean"
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.loss_agg_mode='token-mean'"):
        check_mapo_config(config)
