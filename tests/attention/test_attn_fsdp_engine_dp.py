"""Two FSDP2 data-parallel ranks (gloo, CPU) give the one-rank loss, gradients and metrics."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing

from tests.attention.attention_testlib import tiny_omni_thinker
from tests.attention.engine_testlib import actor_batch, actor_loss, data_parallel_rank, make_engine, run

ETA = 0.05
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean")


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """Both modes from one pair of rank processes (each pays the imports and the model build once)."""
    workdir = tmp_path_factory.mktemp("dp")
    context = torch.multiprocessing.get_context("spawn")
    ranks = [context.Process(target=data_parallel_rank, args=(rank, 2, str(workdir), ETA, LOSS_AGG_MODES))
             for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=300)
    assert [process.exitcode for process in ranks] == [0, 0]
    return {mode: [torch.load(workdir / f"rank{rank}_{mode}.pt") for rank in range(2)] for mode in LOSS_AGG_MODES}


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_two_ranks_match_one(cpu_engine, two_rank_results, loss_agg_mode):
    results = two_rank_results[loss_agg_mode]

    model = tiny_omni_thinker("sdpa", dtype=torch.float64)
    data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
    loss, grads, metrics = run(make_engine(model), data, actor_loss(ETA, loss_agg_mode=loss_agg_mode))

    # veRL averages the ranks' summed micro-batch losses and metrics; FSDP averages gradients
    assert sum(r["loss"] for r in results) / 2 == pytest.approx(loss, rel=1e-10)
    assert sum(r["attn_loss"] for r in results) / 2 == pytest.approx(sum(metrics["mapo/attn_loss"].values), rel=1e-10)
    for r in results:
        assert r["audio_mass"] == pytest.approx(metrics["mapo/audio_mass"].aggregate(), rel=1e-10)
        assert r["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=1e-9, atol=1e-14, msg=name)
