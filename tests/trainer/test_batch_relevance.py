"""The trainer's per-batch MAPO computations (mapo_verl.batch_relevance) on padded tensors."""

import pytest
import torch

from mapo_verl.config import MAPOConfig
from mapo_verl.core import attention_token_coefficients, relevance_weights
from mapo_verl.batch_relevance import (
    attention_fields_for_batch,
    folded_advantages,
    relevance_for_batch,
    relevance_metrics,
    sequence_advantage_magnitude,
)


def padded_batch():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    h_pol = torch.rand(3, 10) * mask
    h_abl = h_pol + torch.linspace(2.0, 0.1, 10)  # audio dependence falls along the response
    return h_pol, h_abl * mask, mask


def test_rows_without_audio_get_unit_weights_and_no_attention_weight():
    h_pol, h_abl, mask = padded_batch()
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.tensor([1, 0, 1]), MAPOConfig())
    assert torch.equal(relevance.omega[1], mask[1].float())
    assert relevance.nu[1].abs().sum() == 0
    want_omega, want_nu = relevance_weights(h_pol, h_abl, mask, tau_base=1.0, cap=5.0)
    torch.testing.assert_close(relevance.omega[[0, 2]], want_omega[[0, 2]])
    torch.testing.assert_close(relevance.nu[[0, 2]], want_nu[[0, 2]])


def test_config_values_reach_the_core():
    h_pol, h_abl, mask = padded_batch()
    config = MAPOConfig(tau_base=0.3, mask_cap=1.2)
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.ones(3), config)
    want, _ = relevance_weights(h_pol, h_abl, mask, tau_base=0.3, cap=1.2)
    torch.testing.assert_close(relevance.omega, want)
    assert relevance.omega.max() <= 1.2


def test_attention_fields_use_grpo_magnitude_failures_and_audio_rows():
    h_pol, h_abl, mask = padded_batch()
    pos = torch.ones(3, 10, dtype=torch.bool)
    pos[:, 0] = False
    config = MAPOConfig()
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.tensor([1, 1, 0]), config, pos_gate=pos)
    advantages = torch.tensor([0.7, -1.2, 0.4]).unsqueeze(-1) * mask
    failed = torch.tensor([False, True, True])
    coef, gate = attention_fields_for_batch(relevance, advantages, failed, config)
    assert sequence_advantage_magnitude(advantages, mask).tolist() == pytest.approx([0.7, 1.2, 0.4])
    want, want_gate = attention_token_coefficients(
        mask, relevance.nu, pos_gate=pos, task_failed=failed, adv_abs=torch.tensor([0.7, 1.2, 0.4]),
        kappa=1.0, fail_floor=0.1, adv_floor=0.02, pref_cap=3.0)
    torch.testing.assert_close(coef[:2], want[:2])
    assert torch.equal(gate[:2], want_gate[:2])
    assert not gate[2].any() and coef[2].abs().sum() == 0  # no audio in row 2


def test_metrics_show_the_collapse_curve():
    h_pol, h_abl, mask = padded_batch()
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.ones(3), MAPOConfig())
    metrics = relevance_metrics(relevance, cap=5.0)
    assert metrics["mapo/audio_sample_frac"] == 1.0
    assert metrics["mapo/delta_h/decile_0"] > metrics["mapo/delta_h/decile_9"]
    assert metrics["mapo/delta_h/late_early_ratio"] < 1.0
    assert metrics["mapo/omega_min"] <= metrics["mapo/omega_mean"] <= metrics["mapo/omega_max"] <= 5.0
    assert metrics["mapo/delta_h_mean"] == pytest.approx(float((h_abl - h_pol)[mask.bool()].mean()), rel=1e-5)
    assert all(isinstance(v, float) for v in metrics.values())
    hist = [metrics[f"mapo/omega_hist/bin_{k}"] for k in range(10)]
    omega = relevance.omega[relevance.response_mask]
    lower, upper = metrics["mapo/omega_hist/lower"], metrics["mapo/omega_hist/upper"]
    assert sum(hist) == pytest.approx(1.0) and (lower, upper) == (float(omega.min()), float(omega.max()))
    assert hist[0] == pytest.approx(float((omega < lower + (upper - lower) / 10).float().mean()))
    assert hist[9] == pytest.approx(float((omega >= lower + 0.9 * (upper - lower)).float().mean()))


def test_metrics_without_audio_rows():
    h_pol, h_abl, mask = padded_batch()
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.zeros(3), MAPOConfig())
    assert relevance_metrics(relevance, cap=5.0) == {"mapo/audio_sample_frac": 0.0}


def test_bad_has_audio_shape_is_named():
    h_pol, h_abl, mask = padded_batch()
    with pytest.raises(ValueError, match="has_audio has shape"):
        relevance_for_batch(h_pol, h_abl, mask, torch.ones(4), MAPOConfig())


def test_folded_advantages_refuse_a_batch_of_another_shape():
    h_pol, h_abl, mask = padded_batch()
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.ones(3), MAPOConfig())
    with pytest.raises(ValueError, match="ablated pass and the advantage step saw different batches"):
        folded_advantages(relevance, torch.zeros(3, 6), torch.ones(3, 6), "token-mean")
