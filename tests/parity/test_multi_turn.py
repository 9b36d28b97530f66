"""Multi-output agent loops: ``adv_estimator=mapo`` takes veRL's per-session GRPO path.

veRL 0.9.1 keys every output ``{uid}_{session}_{index}``; for ``grpo`` only the final output of
each session is normalised within its uid group and its advantage is broadcast to the session's
other outputs. The oracle below does that with Python floats (unbiased std, ε = 1e-6).
"""

import statistics

import numpy as np
import pytest
import torch

from mapo_verl.verl_ext.advantage import RelevanceInputs, compute_mapo_outcome_advantage, provide_relevance

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
    rewards, mask, index = batch()
    inputs = RelevanceInputs(omega=mask.clone(), loss_agg_mode="seq-mean-token-mean", batch_keys=batch_keys)
    with provide_relevance(inputs):
        advantages, _ = compute_mapo_outcome_advantage(rewards, mask, index, config={"norm_adv_by_std_in_grpo": True})
    return advantages, mask, inputs


def test_sessions_are_grouped_by_their_final_output():
    advantages, mask, inputs = mapo_advantages(KEYS)
    want = oracle()
    for row in range(len(KEYS)):
        valid = mask[row].bool()
        assert advantages[row][valid].tolist() == pytest.approx([want[row]] * int(valid.sum()), abs=1e-5)
        assert advantages[row][~valid].abs().sum() == 0
    # the attention gate's |Â| is the session's, before ω̃
    torch.testing.assert_close(inputs.grpo_advantages, advantages)


def test_without_keys_every_output_would_count_as_a_response():
    advantages, mask, _ = mapo_advantages(None)
    want = oracle()
    assert advantages[0][0].item() != pytest.approx(want[0], abs=1e-3)  # the old, plain-GRPO behaviour


def test_key_count_must_match_the_batch():
    with pytest.raises(ValueError, match="batch keys"):
        mapo_advantages(KEYS[:-1])
