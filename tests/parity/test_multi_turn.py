"""Multi-output agent loops: ``adv_estimator=mapo`` takes veRL's per-session GRPO path.

veRL 0.9.1 keys every output ``{uid}_{session}_{index}``; for ``grpo`` only the final output of
each session is normalised within its uid group and its advantage is broadcast to the session's
other outputs. The MAPO trainer runs veRL's advantage step as GRPO (``grpo_advantage_step``) and
folds ω̃ into what it wrote. The oracle below does the grouping with Python floats (unbiased
std, ε = 1e-6).
"""

import statistics

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.protocol import DataProto
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from mapo_verl.config import MAPOConfig
from mapo_verl.batch_relevance import folded_advantages, relevance_for_batch
from mapo_verl.verl_ext.advantage import grpo_advantage_step

# uid p0: session 0 has two outputs, session 1 one, session 2 three; uid p1: two one-output sessions
KEYS = ["p0_0_0", "p0_0_1", "p0_1_0", "p0_2_0", "p0_2_1", "p0_2_2", "p1_0_0", "p1_1_0"]
SCORES = [0.0, 3.0, 1.0, 0.0, 0.0, 2.0, 1.0, 0.0]  # intermediate outputs score 0 here
LENGTH = 5


def batch():
    lengths = [5, 3, 4, 2, 5, 1, 4, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (LENGTH - n) for n in lengths])
    rewards = torch.zeros(len(KEYS), LENGTH)
    for row, (n, score) in enumerate(zip(lengths, SCORES)):
        rewards[row, n - 1] = score
    index = np.array([key.split("_")[0] for key in KEYS], dtype=object)
    return rewards, mask, index


def oracle():
    final = {}
    for row, key in enumerate(KEYS):
        uid, session, index = key.split("_")
        if (uid, session) not in final or final[(uid, session)][0] < int(index):
            final[(uid, session)] = (int(index), SCORES[row])
    by_uid = {}
    for (uid, _), (_, score) in final.items():
        by_uid.setdefault(uid, []).append(score)
    normalised = {}
    for (uid, session), (_, score) in final.items():
        group = by_uid[uid]
        normalised[(uid, session)] = (score - statistics.mean(group)) / (statistics.stdev(group) + 1e-6)
    return [normalised[tuple(key.split("_")[:2])] for key in KEYS]


def mapo_advantages(batch_keys):
    """The MAPO trainer's advantage step on one batch, with ω̃ ≡ 1 (the same |Δh| on every token)."""
    rewards, mask, index = batch()
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": index})
    config = OmegaConf.create({"algorithm": {"adv_estimator": "mapo", "norm_adv_by_std_in_grpo": True}})
    with grpo_advantage_step(config):
        out = compute_advantage_for_multi_trajectories(data, batch_keys=batch_keys,
                                                       adv_estimator=config.algorithm.adv_estimator,
                                                       norm_adv_by_std_in_grpo=True, config=config.algorithm)
    grpo = out.batch["advantages"]
    entropy = torch.rand(mask.shape)
    relevance = relevance_for_batch(entropy, entropy + 0.5, mask, torch.ones(len(KEYS)), MAPOConfig())
    return folded_advantages(relevance, grpo, mask, "seq-mean-token-mean"), mask, grpo


def test_sessions_are_grouped_by_their_final_output():
    advantages, mask, grpo = mapo_advantages(KEYS)
    want = oracle()
    for row in range(len(KEYS)):
        valid = mask[row].bool()
        assert advantages[row][valid].tolist() == pytest.approx([want[row]] * int(valid.sum()), abs=1e-5)
        assert advantages[row][~valid].abs().sum() == 0
    # the attention gate's |Â| is the session's, before ω̃ (here ω̃ ≡ 1: the same values)
    torch.testing.assert_close(grpo, advantages)
