"""The MCQA reward as veRL calls it: accuracy ×2 + format ×1 + consistency ×1, the "acc" key MAPO's gate reads."""

import pytest

from mapo_verl.rewards.mcqa import compute_score

EXTRA = {"choices": ["a dog barking", "a car horn", "rain"], "question": "What is heard?", "index": 7}

# (response, ground truth, expected acc, format, consistency)
CASES = [
    ("<think>Honking, so (B).</think><answer>B</answer>", "B", 1, 1, 1),
    ("<think>Honking, so (B).</think><answer>A</answer>", "B", 0, 1, 0),  # wrong and inconsistent
    ("<think>Barking, so (A).</think><answer>A</answer>", "B", 0, 1, 1),  # wrong but consistent
    ("<think>I hear rain.</think><answer>B</answer>", "B", 1, 1, 0),  # right but not what it reasoned
    ("The answer is B.", "B", 1, 0, 0),  # right, no format, no reasoning
    ("<think>Honking, the answer is B</think>", "B", 0, 0, 0),  # no final answer
    ("<think>Honking, so (B) ...", "B", 0, 0, 0),  # truncated
    ("<think>Honking, so (B).</think><answer>a car horn</answer>", "a car horn", 1, 1, 1),  # text ground truth
]


@pytest.mark.parametrize("response,truth,acc,fmt,consistency", CASES)
def test_components_and_the_authors_weights(response, truth, acc, fmt, consistency):
    result = compute_score("avqa", response, truth, dict(EXTRA))
    assert (result["acc"], result["format"], result["consistency"]) == (acc, fmt, consistency)
    assert result["score"] == 2 * acc + 1 * fmt + 1 * consistency
    assert result["judged"] == 0.0


def test_weights_are_reward_kwargs():
    result = compute_score("avqa", CASES[0][0], "B", dict(EXTRA), acc_weight=1.0, format_weight=0.5,
                           consistency_weight=0.0, reward_router_address=None)
    assert result["score"] == 1.5


def test_rows_without_choices_or_with_a_foreign_ground_truth_fail_naming_the_row():
    with pytest.raises(ValueError, match=r"extra_info\['choices'\].*index=3"):
        compute_score("gsm8k", "42", "42", {"index": 3})
    with pytest.raises(ValueError, match="index=7.*answer 'piano' is not one of"):
        compute_score("avqa", "B", "piano", dict(EXTRA))


def test_the_judge_decides_consistency_when_configured(stub_judge):
    kwargs = {"judge_base_url": stub_judge.url, "judge_model": "judge", "judge_backoff_s": 0.01}
    stub_judge.script = ["no"]  # the rule would say consistent (1)
    result = compute_score("avqa", CASES[0][0], "B", dict(EXTRA), **kwargs)
    assert (result["consistency"], result["judged"], result["score"]) == (0.0, 1.0, 3.0)
    prompt = stub_judge.requests[0]["body"]["messages"][0]["content"]
    assert "What is heard?" in prompt and "Honking, so (B)." in prompt and "Final answer: (B) a car horn" in prompt
    # nothing to judge without a final answer: no request
    compute_score("avqa", "<think>Honking</think>", "B", dict(EXTRA), **kwargs)
    assert len(stub_judge.requests) == 1


def test_a_failing_judge_falls_back_to_the_rule(stub_judge):
    stub_judge.script = [500]
    result = compute_score("avqa", CASES[0][0], "B", dict(EXTRA), judge_base_url=stub_judge.url, judge_model="judge",
                           judge_max_retries=1, judge_backoff_s=0.01)
    assert (result["consistency"], result["judged"]) == (1.0, 0.0)
    assert len(stub_judge.requests) == 2


def test_recipe_reward_config_loads_through_verl_and_scores():
    """The recipes' reward section, through veRL's own loader (pkg:// path, reward_kwargs merged)."""
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from tests.recipes.conftest import RECIPES

    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        config = compose(config_name="mapo_qwen25_omni_3b_fsdp")
    kwargs = config.reward.custom_reward_function.reward_kwargs
    assert (kwargs.acc_weight, kwargs.format_weight, kwargs.consistency_weight) == (2.0, 1.0, 1.0)
    assert kwargs.judge_base_url is None  # the judge is off by default
    reward_fn = get_custom_reward_fn(config)
    result = reward_fn(data_source="avqa", solution_str=CASES[0][0], ground_truth="B", extra_info=dict(EXTRA))
    assert result["score"] == 4.0 and result["acc"] == 1.0


def test_mapo_failure_gate_reads_acc_not_the_total_score():
    """MAPO marks a response failed when reward_extra_info["acc"] <= 0 (config key task_reward_key = "acc")."""
    import torch
    from verl.utils import tensordict_utils as tu

    from mapo_verl.config import MAPOConfig
    from mapo_verl.verl_ext.trainer import _task_failed

    responses = [CASES[0][0], CASES[2][0], CASES[5][0]]  # right (score 4), wrong but formatted (score 2), no answer
    infos = [compute_score("avqa", r, "B", dict(EXTRA)) for r in responses]
    assert [info["score"] for info in infos] == [4.0, 2.0, 0.0]
    batch = tu.get_tensordict({
        "rm_scores": torch.tensor([[0.0, info["score"]] for info in infos]),
        "extra_fields": [{"reward_extra_info": info} for info in infos],
    })
    assert MAPOConfig().task_reward_key == "acc"
    assert _task_failed(batch, MAPOConfig().task_reward_key).tolist() == [False, True, True]
