"""The tone-naming task: labels follow the stated distributions, clips hold the tones they name,
the reward scores positions and whole sequences as documented."""

import numpy as np
import pytest

from mapo_verl.demo.grounding import (CLIP_SECONDS, CYCLE_FOLLOW, MAX_TONES, PRIOR_FROM, TONE_HZ, TONE_NAMES,
                                      compute_score, make_clip, make_examples, make_labels, prior_accuracy, rows_of)
from mapo_verl.demo.grounding_eval import prior_follow
from mapo_verl.demo.model import SAMPLING_RATE


def test_reward_scores_positions_and_exact_sequences():
    truth = "low mid high low"
    assert compute_score("s", "low mid high low", truth) == {"score": 1.0, "acc": 1.0}
    assert compute_score("s", "low mid low low", truth) == {"score": 0.75, "acc": 0.0}
    assert compute_score("s", "low mid", truth) == {"score": 0.5, "acc": 0.0}  # missing names count as wrong
    assert compute_score("s", "low mid high low high high", truth) == {"score": 4 / 6, "acc": 0.0}  # extras cost
    assert compute_score("s", "", truth) == {"score": 0.0, "acc": 0.0}
    assert compute_score("s", " LOW  Mid high\nlow", truth)["acc"] == 1.0
    with pytest.raises(ValueError, match="empty ground truth"):
        compute_score("s", "low", " ")


def test_cycle_prior_holds_late_only_and_is_as_strong_as_stated():
    rng = np.random.default_rng(0)
    cycle = np.array([make_labels(10, "cycle", rng) for _ in range(4000)])
    successor = (cycle[:, 1:] - cycle[:, :-1]) % 3 == 1  # [rows, positions 2..10]
    early, late = successor[:, :PRIOR_FROM - 1].mean(), successor[:, PRIOR_FROM - 1:].mean()
    # the first PRIOR_FROM tones are i.i.d. (successor 1/3); later ones follow with CYCLE_FOLLOW, else i.i.d.
    assert early == pytest.approx(1 / 3, abs=0.01)
    assert late == pytest.approx(CYCLE_FOLLOW + (1 - CYCLE_FOLLOW) / 3, abs=0.01)
    assert prior_accuracy() == pytest.approx(0.9 + 0.1 / 3) and late > 0.9
    uniform = np.array([make_labels(8, "uniform", rng) for _ in range(2000)])
    successor = ((uniform[:, 1:] - uniform[:, :-1]) % 3 == 1).mean()
    assert successor == pytest.approx(1 / 3, abs=0.01) and set(np.unique(uniform)) == {0, 1, 2}


def test_clip_holds_the_named_tones_in_order():
    rng = np.random.default_rng(1)
    labels = [0, 2, 1, 1, 0]
    clip = make_clip(labels, rng)
    # split at silences (noise only) and read each tone's dominant frequency
    loud = np.convolve(np.abs(clip) > 0.1, np.ones(80), mode="same") > 0
    edges = np.flatnonzero(np.diff(loud.astype(int)))
    segments = [clip[start:stop] for start, stop in zip(edges[::2], edges[1::2])]
    assert len(segments) == len(labels)
    heard = [float(np.argmax(np.abs(np.fft.rfft(s)))) * SAMPLING_RATE / len(s) for s in segments]
    assert [int(np.argmin([abs(h - hz) for hz in TONE_HZ])) for h in heard] == labels


def test_longest_clips_fit_and_bad_sizes_are_named():
    examples = make_examples(20, (MAX_TONES, MAX_TONES), "uniform", seed=3)
    assert max(e.clip.size for e in examples) <= CLIP_SECONDS * SAMPLING_RATE
    row = rows_of(examples[:1], "val")[0]
    assert row["reward_model"]["ground_truth"] == " ".join(TONE_NAMES[i] for i in examples[0].labels)
    assert row["extra_info"]["num_tones"] == MAX_TONES and row["prompt"][0]["content"].startswith("<audio>")
    with pytest.raises(ValueError, match="num_tones"):
        make_labels(MAX_TONES + 1, "cycle", np.random.default_rng(0))
    with pytest.raises(ValueError, match="distribution"):
        make_labels(3, "zipf", np.random.default_rng(0))
    with pytest.raises(ValueError, match="tones must be a range"):
        make_examples(1, (5, 2), "cycle", seed=0)


def test_prior_follow_counts_cycle_continuations_of_the_answer_itself():
    # low→mid continues, mid→mid does not, mid→high continues, high→low continues; t=6 missing
    assert prior_follow(["low", "mid", "mid", "high", "low"], 6) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert prior_follow(["low", "oops", "high"], 3) == [0.0, 0.0]  # non-names never count
    assert prior_follow([], 4) == [0.0, 0.0, 0.0]
