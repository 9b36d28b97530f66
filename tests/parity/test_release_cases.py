"""The authors' release's own unit-test cases, re-derived independently for our functions.

Each expected value below comes from the method's formula or from arithmetic written out in
the test (never from the code under test): ω̃ and ν̃ sum to T (N_pos) before clipping; a
high |Δh| raises ω̃ and lowers ν̃; fail = 0 (and no floor) gives a zero attention loss; more
audio mass gives a smaller loss; the GRPO and BNPO reductions of a POS-gated token mean.
"""

import math

import pytest
import torch

from mapo_verl.core import aggregate_token_losses, attention_objective, relevance_weights


def entropies_with_abs_delta(delta):
    """(H_pol, H_abl) whose |H_abl − H_pol| is ``delta`` (alternating signs, arbitrary offset)."""
    delta = torch.as_tensor(delta, dtype=torch.float64)
    sign = torch.where(torch.arange(delta.shape[-1]) % 2 == 0, 1.0, -1.0).to(torch.float64)
    policy = torch.full_like(delta, 2.5)
    return policy, policy + sign * delta


def softmax_times_count(scores, valid):
    """Oracle: ``n · softmax`` over the valid entries of one row, with Python floats."""
    exps = [math.exp(s) if v else 0.0 for s, v in zip(scores, valid)]
    total, count = sum(exps), sum(valid)
    return [count * e / total for e in exps]


def test_omega_and_nu_sum_to_the_token_count_before_clipping():
    delta = [[0.1, 0.2, 0.8, 0.0], [0.4, 0.6, 0.0, 0.0]]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    policy, ablated = entropies_with_abs_delta(delta)
    omega, nu = relevance_weights(policy, ablated, mask, tau_base=0.7, cap=0.0)
    torch.testing.assert_close(omega.sum(-1).double(), mask.sum(-1).double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(nu.sum(-1).double(), mask.sum(-1).double(), rtol=0, atol=1e-5)
    for row in range(2):
        valid = mask[row].bool().tolist()
        tau = 0.7 * math.log(max(sum(valid), 2))
        want_omega = softmax_times_count([d / tau for d in delta[row]], valid)
        want_nu = softmax_times_count([-d / tau for d in delta[row]], valid)
        assert omega[row].tolist() == pytest.approx(want_omega, abs=1e-6)
        assert nu[row].tolist() == pytest.approx(want_nu, abs=1e-6)


def test_nu_sums_to_the_gated_count_over_gated_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    gate = torch.tensor([[1, 0, 1, 1, 0]])
    policy, ablated = entropies_with_abs_delta([[0.3, 1.0, 0.1, 0.7, 0.0]])
    _, nu = relevance_weights(policy, ablated, mask, cap=0.0, pos_gate=gate)
    assert float(nu.sum()) == pytest.approx(3.0, abs=1e-5)
    assert float(nu[0, 1]) == 0.0


def test_high_delta_h_gets_larger_omega_and_smaller_nu():
    mask = torch.tensor([[1, 1, 1, 0]])
    policy, ablated = entropies_with_abs_delta([[0.1, 2.0, 0.2, 0.0]])
    omega, nu = relevance_weights(policy, ablated, mask, tau_base=0.5, cap=0.0)
    assert omega[0, 1] > omega[0, 0] and omega[0, 1] > omega[0, 2]
    assert nu[0, 1] < nu[0, 0] and nu[0, 1] < nu[0, 2]


def test_task_not_failed_disables_the_attention_loss():
    mask = torch.ones(1, 3)
    loss = attention_objective(torch.tensor([[0.2, 0.5, 0.9]]), mask, torch.ones(1, 3),
                               task_failed=torch.zeros(1), adv_abs=torch.tensor([1.5]), fail_floor=0.0)
    assert float(loss) == 0.0


def test_more_audio_mass_gives_a_smaller_loss_with_the_spec_value():
    mask, nu = torch.ones(1, 3), torch.ones(1, 3)
    losses = {}
    for mass in (0.1, 0.8):
        losses[mass] = float(attention_objective(torch.full((1, 3), mass, dtype=torch.float64), mask, nu,
                                                 task_failed=torch.ones(1), adv_abs=torch.ones(1)))
    assert losses[0.8] < losses[0.1]
    # (1/N) Σ_t (t/T)^1 · 1 · (−log(a + 1e-6)) with T = N = 3: (1/3 + 2/3 + 1) / 3 = 2/3
    assert losses[0.1] == pytest.approx(2 / 3 * -math.log(0.1 + 1e-6), rel=1e-6)  # coefficients are float32


VALUES = torch.tensor([[0.1, 0.2, 0.3, 0.0], [0.4, 0.8, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
POS = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]]).bool()


def test_grpo_reduction_of_a_pos_gated_mean():
    # per-sequence gated means, then their mean: ((0.1 + 0.3) / 2 + 0.8) / 2
    got = aggregate_token_losses(VALUES, MASK & POS, "seq-mean-token-mean")
    assert float(got) == pytest.approx(((0.1 + 0.3) / 2 + 0.8) / 2, abs=1e-7)


def test_bnpo_reduction_of_a_pos_gated_mean():
    # one token mean over every gated token of the batch: (0.1 + 0.3 + 0.8) / 3
    got = aggregate_token_losses(VALUES, MASK & POS, "token-mean")
    assert float(got) == pytest.approx((0.1 + 0.3 + 0.8) / 3, abs=1e-7)
