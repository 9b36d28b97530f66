"""The core's token-loss aggregation against veRL's ``agg_loss`` (docs/DESIGN.md, "Layout": the core is pure torch,
so the agreement with veRL is checked here, next to the adapters)."""

import pytest
import torch
from verl.trainer.ppo.core_algos import agg_loss

from mapo_verl.core import LOSS_AGG_MODES, aggregate_token_losses


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("global_info", [None, {"dp_size": 2, "batch_num_tokens": 40, "global_batch_size": 8}])
def test_aggregation_matches_verl_agg_loss(mode, global_info):
    """Our aggregation is veRL's agg_loss (modulo veRL's 1e-8 row epsilon, absent in float32)."""
    torch.manual_seed(1)
    loss_mat = torch.randn(4, 6)
    mask = (torch.rand(4, 6) > 0.3).float()
    mask[0] = 0  # an empty row
    info = global_info or {}
    want = agg_loss(loss_mat, mask, mode, **info)
    got = aggregate_token_losses(loss_mat, mask.bool(), mode, num_sequences=info.get("global_batch_size"),
                                 num_tokens=info.get("batch_num_tokens"), dp_size=info.get("dp_size", 1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
