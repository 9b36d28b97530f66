"""L_attn against a loop-by-loop oracle of the method's formula, its gradient, the gate, and bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mapo_verl.core import (
    LOSS_AGG_MODES,
    attention_objective,
    attention_objective_from_coefficients,
    attention_token_coefficients,
    relevance_weights,
    sequence_gate,
)
from tests.core.reference import attention_loss, gate_value


@st.composite
def attention_batches(draw):
    rows, length = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    bits = st.lists(st.lists(st.integers(0, 1), min_size=length, max_size=length), min_size=rows, max_size=rows)
    mask, pos = draw(bits), draw(bits)
    mass = [[draw(st.floats(0.0, 1.0)) for _ in range(length)] for _ in range(rows)]
    failed = draw(st.lists(st.booleans(), min_size=rows, max_size=rows))
    adv_abs = draw(st.lists(st.floats(0.0, 3.0), min_size=rows, max_size=rows))
    return mask, pos, mass, failed, adv_abs


@settings(max_examples=150, deadline=None)
@given(attention_batches(), st.sampled_from([1.0, 2.0]), st.sampled_from([0.0, 0.1]), st.sampled_from([0.0, 0.02]),
       st.sampled_from([0.0, 3.0]))
def test_matches_spec_oracle(batch, kappa, fail_floor, adv_floor, pref_cap):
    mask, pos, mass, failed, adv_abs = batch
    h = torch.rand(len(mask), len(mask[0]))
    _, nu = relevance_weights(h, h * 2, torch.tensor(mask), pos_gate=torch.tensor(pos))
    got = attention_objective(
        torch.tensor(mass, dtype=torch.float64), torch.tensor(mask), nu, pos_gate=torch.tensor(pos),
        task_failed=torch.tensor(failed), adv_abs=torch.tensor(adv_abs), kappa=kappa, fail_floor=fail_floor,
        adv_floor=adv_floor, pref_cap=pref_cap,
    )
    want = attention_loss(mass, mask, nu.double().tolist(), pos, failed, adv_abs, kappa=kappa, eps=1e-6,
                          fail_floor=fail_floor, adv_floor=adv_floor, pref_cap=pref_cap)
    assert got.item() == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_gradcheck_float64():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    nu = torch.rand(2, 4) * mask
    mass = (torch.rand(2, 4, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)

    def objective(a):
        return attention_objective(a, mask, nu, task_failed=torch.tensor([1, 0]), adv_abs=torch.tensor([0.4, 2.0]),
                                   fail_floor=0.1, kappa=2.0)

    assert torch.autograd.gradcheck(objective, (mass,))


def test_gradient_pushes_late_tokens_harder():
    """∂L/∂a_t ∝ −(t/T)^κ ν̃_t / (a_t + ε): with equal ν̃ and a, later tokens get larger pulls."""
    mass = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    attention_objective(mass, torch.ones(1, 4), torch.ones(1, 4), kappa=1.0).backward()
    grads = (-mass.grad[0]).tolist()
    assert grads == sorted(grads) and grads[-1] == pytest.approx(4 * grads[0])


def test_gate_semantics():
    failed = torch.tensor([1, 0, 1, 0])
    adv = torch.tensor([0.01, 2.0, 5.0, 0.0])
    gate = sequence_gate(4, task_failed=failed, adv_abs=adv, fail_floor=0.1, adv_floor=0.02, pref_cap=3.0)
    want = [gate_value(bool(f), a, 0.1, 0.02, 3.0) for f, a in zip(failed.tolist(), adv.tolist())]
    assert gate.tolist() == pytest.approx(want)
    assert gate.tolist() == pytest.approx([0.02, 0.2, 3.0, 0.0])  # floor, floor·|Â|, cap, success with Â = 0
    assert sequence_gate(3).tolist() == [1.0, 1.0, 1.0]  # no reward information: the gate is off


def test_rows_without_gated_tokens_still_count_in_G():
    mass = torch.full((2, 3), 0.5, dtype=torch.float64)
    one_row = attention_objective(mass[:1], torch.ones(1, 3), torch.ones(1, 3))
    two_rows = attention_objective(mass, torch.ones(2, 3), torch.ones(2, 3), pos_gate=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    assert two_rows.item() == pytest.approx(one_row.item() / 2)


def test_bad_input_is_named():
    ones = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"audio_mass holds NaN .*rows \[1\]"):
        attention_objective(torch.tensor([[0.5] * 3, [0.5, float("nan"), 0.5]]), ones, ones)
    with pytest.raises(ValueError, match=r"audio_mass holds inf .*rows \[0\]"):
        attention_objective(torch.tensor([[float("inf"), 0.5, 0.5], [0.5] * 3]), ones, ones)
    with pytest.raises(ValueError, match="audio_mass \\+ eps must be > 0"):
        attention_objective(torch.full((2, 3), -1.0), ones, ones)
    with pytest.raises(ValueError, match=r"task_failed has shape \(3,\)"):
        attention_objective(ones * 0.5, ones, ones, task_failed=torch.ones(3))
    with pytest.raises(ValueError, match="adv_abs must be finite and >= 0"):
        attention_objective(ones * 0.5, ones, ones, adv_abs=torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="eps must be"):
        attention_objective(ones * 0.5, ones, ones, eps=0.0)
    with pytest.raises(ValueError, match="fail_floor"):
        attention_objective(ones * 0.5, ones, ones, fail_floor=-0.5)


def test_nan_mass_outside_the_gate_is_ignored():
    mass = torch.tensor([[0.5, float("nan")]])
    value = attention_objective(mass, torch.tensor([[1, 0]]), torch.ones(1, 2))
    assert torch.isfinite(value)


def test_micro_batch_split_invariance_with_global_normalisers():
    torch.manual_seed(2)
    mass = torch.rand(6, 5, dtype=torch.float64) * 0.9 + 0.05
    mask = (torch.rand(6, 5) > 0.2).long()
    mask[:, 0] = 1
    coef, gated = attention_token_coefficients(mask, torch.rand(6, 5) * mask, kappa=1.0)
    for mode in LOSS_AGG_MODES:
        full = attention_objective_from_coefficients(mass, coef, gated, loss_agg_mode=mode)
        parts = sum(
            attention_objective_from_coefficients(mass[s], coef[s], gated[s], loss_agg_mode=mode, num_sequences=6,
                                                  num_tokens=int(gated.sum()))
            for s in (slice(0, 2), slice(2, 5), slice(5, 6))
        )
        assert parts.item() == pytest.approx(full.item(), rel=1e-12), mode
