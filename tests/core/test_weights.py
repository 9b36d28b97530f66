"""ω̃, ν̃ and (t/T)^κ against loop-by-loop oracles written from the formulas, plus bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mapo_verl.core import relevance_weights, temporal_weights
from tests.core.reference import relevance_row, temporal_row


@st.composite
def batches(draw, max_rows=4, max_len=9):
    rows = draw(st.integers(1, max_rows))
    length = draw(st.integers(1, max_len))
    cell = st.floats(0.0, 12.0, allow_nan=False, width=32)
    mask = [[draw(st.integers(0, 1)) for _ in range(length)] for _ in range(rows)]
    gate = [[draw(st.integers(0, 1)) for _ in range(length)] for _ in range(rows)]
    h_pol = [[draw(cell) for _ in range(length)] for _ in range(rows)]
    h_abl = [[draw(cell) for _ in range(length)] for _ in range(rows)]
    return mask, gate, h_pol, h_abl


@settings(max_examples=150, deadline=None)
@given(batches(), st.sampled_from([0.25, 1.0, 3.0]), st.sampled_from([0.0, 1.0, 1.5, 5.0]), st.booleans())
def test_relevance_matches_spec_oracle(batch, tau_base, cap, use_gate):
    mask, gate, h_pol, h_abl = batch
    omega, nu = relevance_weights(
        torch.tensor(h_pol), torch.tensor(h_abl), torch.tensor(mask), tau_base=tau_base, cap=cap,
        pos_gate=torch.tensor(gate) if use_gate else None,
    )
    assert omega.dtype == nu.dtype == torch.float32
    for g in range(len(mask)):
        row_gate = gate[g] if use_gate else [1] * len(mask[g])
        want_omega, want_nu = relevance_row(h_pol[g], h_abl[g], mask[g], row_gate, tau_base, cap)
        assert omega[g].tolist() == pytest.approx(want_omega, rel=1e-5, abs=1e-6)
        assert nu[g].tolist() == pytest.approx(want_nu, rel=1e-5, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(batches())
def test_relevance_properties(batch):
    mask, gate, h_pol, h_abl = batch
    mask_t, gate_t = torch.tensor(mask, dtype=torch.bool), torch.tensor(gate, dtype=torch.bool)
    omega, nu = relevance_weights(torch.tensor(h_pol), torch.tensor(h_abl), mask_t, cap=0.0, pos_gate=gate_t)
    # zero outside the mask (ν̃ also outside the gate), non-negative inside
    assert torch.all(omega[~mask_t] == 0) and torch.all(nu[~(mask_t & gate_t)] == 0)
    assert torch.all(omega >= 0) and torch.all(nu >= 0)
    # uncapped: T_g · softmax sums to T_g, N_pos · softmax to N_pos (mean exactly 1)
    torch.testing.assert_close(omega.sum(-1), mask_t.sum(-1).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nu.sum(-1), (mask_t & gate_t).sum(-1).float(), rtol=1e-5, atol=1e-5)
    capped, _ = relevance_weights(torch.tensor(h_pol), torch.tensor(h_abl), mask_t, cap=1.5)
    assert torch.all(capped <= 1.5)


def test_relevance_orders_tokens_by_audio_dependence():
    h_pol = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    h_abl = torch.tensor([[1.0, 2.0, 4.0, 1.5]])  # |Δh| = 0, 1, 3, 0.5
    omega, nu = relevance_weights(h_pol, h_abl, torch.ones(1, 4), cap=0.0)
    assert omega[0].argsort().tolist() == [0, 3, 1, 2]
    assert nu[0].argsort().tolist() == [2, 1, 3, 0]  # ν̃ is large where the audio matters least


def test_relevance_depends_on_absolute_difference_only():
    h_pol = torch.tensor([[2.0, 2.0, 2.0]])
    up = relevance_weights(h_pol, h_pol + torch.tensor([[0.5, 1.0, 0.0]]), torch.ones(1, 3))
    down = relevance_weights(h_pol, h_pol - torch.tensor([[0.5, 1.0, 0.0]]), torch.ones(1, 3))
    torch.testing.assert_close(up, down)


def test_edge_rows_empty_single_and_all_masked():
    mask = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 1]])
    h = torch.rand(3, 3)
    omega, nu = relevance_weights(h, h + 1, mask, pos_gate=torch.tensor([[1, 1, 1], [1, 1, 1], [0, 0, 0]]))
    assert omega[0].tolist() == [0, 0, 0] and nu[0].tolist() == [0, 0, 0]
    assert omega[1].tolist() == [1, 0, 0] and nu[1].tolist() == [1, 0, 0]  # T = 1: τ uses log 2, weight 1
    assert nu[2].tolist() == [0, 0, 0]  # nothing passes the POS gate


def test_huge_entropies_and_bf16_stay_finite():
    huge = torch.tensor([[1e30, 0.0, 3e38, 1.0]])
    omega, nu = relevance_weights(torch.zeros(1, 4), huge, torch.ones(1, 4), cap=0.0)
    assert torch.isfinite(omega).all() and torch.isfinite(nu).all()
    assert omega.sum().item() == pytest.approx(4.0)
    bf16 = torch.rand(2, 5, dtype=torch.bfloat16) * 8
    omega, nu = relevance_weights(bf16, bf16.flip(-1), torch.ones(2, 5, dtype=torch.bool))
    assert omega.dtype == torch.float32 and torch.isfinite(omega).all() and torch.isfinite(nu).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_entropy_is_a_clear_error(bad):
    h = torch.ones(3, 4)
    h[2, 1] = bad
    with pytest.raises(ValueError, match=r"entropy_ablated .*rows \[2\]"):
        relevance_weights(torch.ones(3, 4), h, torch.ones(3, 4))


def test_non_finite_values_in_padding_are_ignored():
    h = torch.ones(1, 4)
    h[0, 3] = float("nan")
    omega, _ = relevance_weights(torch.zeros(1, 4), h, torch.tensor([[1, 1, 1, 0]]))
    assert torch.isfinite(omega).all() and omega[0, 3] == 0


def test_bad_arguments_are_named():
    ones = torch.ones(2, 3)
    with pytest.raises(ValueError, match="response_mask must contain only 0/1"):
        relevance_weights(ones, ones, torch.full((2, 3), 2))
    with pytest.raises(ValueError, match="entropy_policy has shape"):
        relevance_weights(torch.ones(2, 4), ones, ones)
    with pytest.raises(ValueError, match="pos_gate has shape"):
        relevance_weights(ones, ones, ones, pos_gate=torch.ones(3, 3))
    with pytest.raises(ValueError, match="tau_base"):
        relevance_weights(ones, ones, ones, tau_base=0.0)
    with pytest.raises(ValueError, match=r"\[batch, response_length\]"):
        relevance_weights(torch.ones(3), torch.ones(3), torch.ones(3))


def test_relevance_is_detached():
    h = torch.rand(2, 3, requires_grad=True)
    omega, nu = relevance_weights(h, h.detach() * 2, torch.ones(2, 3))
    assert not omega.requires_grad and not nu.requires_grad


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=4),
       st.sampled_from([0.0, 1.0, 2.0, 3.5]))
def test_temporal_matches_oracle(mask, kappa):
    got = temporal_weights(torch.tensor(mask), kappa=kappa)
    for g, row in enumerate(mask):
        assert got[g].tolist() == pytest.approx(temporal_row(row, kappa), rel=1e-6, abs=1e-7)


def test_temporal_counts_only_valid_tokens():
    got = temporal_weights(torch.tensor([[1, 0, 1, 1, 0]]), kappa=1.0)
    assert got[0].tolist() == pytest.approx([1 / 3, 0, 2 / 3, 1, 0])
    with pytest.raises(ValueError, match="kappa"):
        temporal_weights(torch.ones(1, 2), kappa=math.nan)
