"""ω̃ folded into advantages: veRL's own vanilla loss must equal the method's weighted loss.

Equivalence: with ω̃ ≡ 1 the folded advantages reproduce veRL's GRPO loss *and* gradient
bit for bit, for every loss_agg_mode. Weighted: veRL's loss on the folded advantages equals
``Σ ω̃ ℓ / Σ ω̃`` computed independently (loops over Python floats) to 1e-10 in float64.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
from verl.workers.config import FSDPActorConfig

from mapo_verl.core import LOSS_AGG_MODES, fold_relevance_into_advantages, relevance_weights
from tests.core.reference import VERL_SEQ_MEAN_EPS, clipped_token_loss, weighted_pg_loss

CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.28, 3.0


def actor_config(global_batch_info=None):
    config = FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                             clip_ratio_low=CLIP_LOW, clip_ratio_high=CLIP_HIGH, clip_ratio_c=CLIP_C)
    config.global_batch_info.update(global_batch_info or {})
    return config


def grpo_batch(seed, rows=8, length=11, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=gen)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(rows, length)
    rewards[torch.arange(rows), lengths - 1] = torch.randint(0, 3, (rows,), generator=gen).float()
    index = [str(i // 4) for i in range(rows)]  # groups of 4 responses
    advantages, _ = compute_grpo_outcome_advantage(rewards, mask, index=index)
    # log-probs spread so that ratios hit both clip bounds and the dual clip
    old = -torch.rand(rows, length, generator=gen).to(dtype) * 3
    new = old + torch.randn(rows, length, generator=gen).to(dtype) * 1.5
    return advantages.to(dtype), mask.to(dtype), old, new


def verl_loss_and_grad(advantages, mask, old, new, mode, global_batch_info=None):
    log_prob = new.clone().requires_grad_(True)
    loss, _ = compute_policy_loss_vanilla(old, log_prob, advantages, mask, loss_agg_mode=mode,
                                          config=actor_config(global_batch_info))
    loss.backward()
    return loss.detach(), log_prob.grad


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_reproduce_grpo_bit_for_bit(mode, seed):
    advantages, mask, old, new = grpo_batch(seed)
    folded = fold_relevance_into_advantages(advantages, mask.clone(), mask, loss_agg_mode=mode)
    assert torch.equal(folded, advantages)
    loss_ref, grad_ref = verl_loss_and_grad(advantages, mask, old, new, mode)
    loss, grad = verl_loss_and_grad(folded, mask, old, new, mode)
    assert torch.equal(loss, loss_ref) and torch.equal(grad, grad_ref)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_unit_weights_with_global_normalisers(mode):
    advantages, mask, old, new = grpo_batch(3)
    info = {"dp_size": 2, "batch_num_tokens": int(mask.sum()) * 2, "global_batch_size": 16}
    folded = fold_relevance_into_advantages(advantages, torch.ones_like(mask), mask, loss_agg_mode=mode)
    assert torch.equal(verl_loss_and_grad(folded, mask, old, new, mode, info)[1],
                       verl_loss_and_grad(advantages, mask, old, new, mode, info)[1])


def test_equal_entropies_give_grpo_to_float_precision():
    """Δh ≡ 0 gives ω̃ = T·(1/T): 1 up to rounding, so GRPO is reproduced to ~1 ulp."""
    advantages, mask, old, new = grpo_batch(4)
    h = torch.rand(mask.shape)
    omega, _ = relevance_weights(h, h, mask)
    folded = fold_relevance_into_advantages(advantages, omega, mask)
    torch.testing.assert_close(folded, advantages, rtol=2e-7, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(LOSS_AGG_MODES), st.sampled_from([0.0, 1.5, 5.0]))
def test_weighted_loss_matches_spec(seed, mode, cap):
    advantages, mask, old, new = grpo_batch(seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    omega, _ = relevance_weights(torch.rand(mask.shape, generator=gen) * 4, torch.rand(mask.shape, generator=gen) * 4,
                                 mask, cap=cap)
    omega = omega.double()
    folded = fold_relevance_into_advantages(advantages, omega, mask, loss_agg_mode=mode)
    loss, _ = verl_loss_and_grad(folded, mask, old, new, mode)
    ratio = (new - old).exp()
    token_loss = [[clipped_token_loss(ratio[g, t].item(), advantages[g, t].item(), CLIP_LOW, CLIP_HIGH, CLIP_C)
                   for t in range(mask.shape[1])] for g in range(mask.shape[0])]
    want = weighted_pg_loss(token_loss, omega.tolist(), mask.int().tolist(), mode, horizon=mask.shape[1])
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_weighted_gradient_matches_independent_autograd(mode):
    """float64 gradient of veRL's loss on folded advantages vs a direct torch Σω̃ℓ/Σω̃."""
    advantages, mask, old, new = grpo_batch(7, dtype=torch.float64)
    omega, _ = relevance_weights(torch.rand(mask.shape) * 3, torch.rand(mask.shape) * 3, mask)
    omega = omega.double()
    _, grad = verl_loss_and_grad(fold_relevance_into_advantages(advantages, omega, mask, loss_agg_mode=mode),
                                 mask, old, new, mode)
    log_prob = new.clone().requires_grad_(True)
    ratio = (log_prob - old).exp()
    clipped = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH))
    token = torch.where(advantages < 0, torch.minimum(clipped, -advantages * CLIP_C), clipped)
    rows = mask.any(-1).sum()
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(-1)
        row = (omega * token * mask).sum(-1) / (omega * mask).sum(-1) * lengths / (lengths + VERL_SEQ_MEAN_EPS)
        direct = row.sum() / rows
    else:
        scale = {"token-mean": 1.0, "token-sum": mask.sum(), "seq-mean-token-sum": mask.sum() / rows,
                 "seq-mean-token-sum-norm": mask.sum() / rows / mask.shape[1]}[mode]
        direct = (omega * token * mask).sum() / (omega * mask).sum() * scale
    direct.backward()
    torch.testing.assert_close(grad, log_prob.grad, rtol=1e-12, atol=1e-15)


def test_positions_outside_the_mask_pass_through():
    advantages = torch.tensor([[1.0, -2.0, 7.0]])
    folded = fold_relevance_into_advantages(advantages, torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 1, 0]]))
    assert folded[0, 2] == 7.0
    assert folded[0, :2].tolist() == pytest.approx([1.0 * 2 * 2 / 3, -2.0 * 1 * 2 / 3])


def test_fold_rejects_bad_weights_and_modes():
    a, m = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"omega must be >= 0.*rows \[1\]"):
        fold_relevance_into_advantages(a, torch.tensor([[1.0, 1, 1], [1, -1, 1]]), m)
    with pytest.raises(ValueError, match=r"sums to 0 .*rows \[0\]"):
        fold_relevance_into_advantages(a, torch.tensor([[0.0, 0, 0], [1, 1, 1]]), m)
    with pytest.raises(ValueError, match="sums to 0 over the valid tokens of the batch"):
        fold_relevance_into_advantages(a, torch.zeros(2, 3), m, loss_agg_mode="token-mean")
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        fold_relevance_into_advantages(a, a, m, loss_agg_mode="token-median")
    with pytest.raises(ValueError, match="omega holds NaN"):
        fold_relevance_into_advantages(a, torch.full((2, 3), float("nan")), m)
    with pytest.raises(ValueError, match="advantages has shape"):
        fold_relevance_into_advantages(torch.ones(2, 4), a, m)
