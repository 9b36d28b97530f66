"""The audio multiple-choice reward: accuracy ×2 + format ×1 + consistency ×1 (the authors' weights, docs/DESIGN.md "Parity with the authors' release").

A veRL custom reward function; the recipes select it with::

    reward.custom_reward_function.path=pkg://mapo_verl.rewards.mcqa
    reward.custom_reward_function.name=compute_score

and pass the weights and judge settings as ``reward.custom_reward_function.reward_kwargs``.
Rows come from ``scripts/prepare_data.py``: ``reward_model.ground_truth`` is the correct
option's letter, ``extra_info.choices`` the option texts, ``extra_info.question`` the question.

- ``acc`` ∈ {0, 1}: the option the response commits to (:func:`mapo_verl.rewards.answer.extract_choice`)
  is the correct one. MAPO's failure gate reads it (``fail_g = acc ≤ 0``, the default
  ``actor_rollout_ref.actor.policy_loss.mapo.task_reward_key=acc``).
- ``format`` ∈ {0, 1}: ``[<think>] reasoning </think> <answer> ... </answer>``.
- ``consistency`` ∈ {0, 1}: the final answer follows from the reasoning. Judged by an
  OpenAI-compatible model when ``judge_base_url`` is set (off by default); otherwise, and
  when the judge fails, by rule: the option the reasoning concludes with or mentions last
  is the final answer. No reasoning or no answer scores 0.

``judged`` tells whether the judge gave the consistency value, ``answered`` whether an
option was extracted at all.
"""

from __future__ import annotations

import logging
from typing import Any

from mapo_verl.data.mcqa import LETTERS, RecordError, answer_index
from mapo_verl.rewards.answer import extract_choice, format_ok, reasoning_choice, split_response
from mapo_verl.rewards.judge import JudgeError, JudgeSettings, get_judge_client, judge_consistency

__all__ = ["DEFAULT_WEIGHTS", "compute_score"]

logger = logging.getLogger(__name__)

# The authors' reward weights: MCQA accuracy ×2, format ×1, consistency ×1.
DEFAULT_WEIGHTS = {"acc": 2.0, "format": 1.0, "consistency": 1.0}
_warned_judge_failure = False


def _choices_of(extra_info: dict | None, data_source: str) -> list[str]:
    choices = (extra_info or {}).get("choices")
    if choices is None or len(choices) < 2:
        raise ValueError(
            f"mapo_verl.rewards.mcqa needs the option texts in extra_info['choices'] (data_source={data_source!r}, "
            f"index={(extra_info or {}).get('index')!r}); write the data with scripts/prepare_data.py"
        )
    return [str(choice) for choice in choices]


def _consistency(response: str, choices: list[str], chosen: int | None, question: str,
                 judge: JudgeSettings | None) -> tuple[float, bool]:
    global _warned_judge_failure
    reasoning = split_response(response).reasoning
    if chosen is None or reasoning is None or not reasoning.strip():
        return 0.0, False
    rule = float(reasoning_choice(reasoning, choices) == chosen)
    if judge is None:
        return rule, False
    try:
        answer = f"({LETTERS[chosen]}) {choices[chosen]}"
        return judge_consistency(get_judge_client(judge), question, choices, reasoning, answer), True
    except JudgeError as error:
        if not _warned_judge_failure:
            logger.warning("consistency judge failed, using the rule-based value instead (logged once): %s", error)
            _warned_judge_failure = True
        return rule, False


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    acc_weight: float = DEFAULT_WEIGHTS["acc"],
    format_weight: float = DEFAULT_WEIGHTS["format"],
    consistency_weight: float = DEFAULT_WEIGHTS["consistency"],
    judge_base_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key_env: str = "MAPO_JUDGE_API_KEY",
    judge_timeout_s: float = 20.0,
    judge_max_retries: int = 2,
    judge_backoff_s: float = 0.5,
    judge_cache_path: str | None = None,
    **_: Any,
) -> dict[str, float]:
    """veRL reward-function signature; returns ``{"score", "acc", "format", "consistency", "answered", "judged"}``.

    ``score = acc_weight·acc + format_weight·format + consistency_weight·consistency``. Extra
    keyword arguments veRL passes (``reward_router_address``, ...) are ignored.
    """
    choices = _choices_of(extra_info, data_source)
    try:
        correct = answer_index(ground_truth, choices)
    except RecordError as error:
        raise ValueError(f"ground truth of data_source={data_source!r}, index={(extra_info or {}).get('index')!r}: "
                         f"{error}") from error
    judge = None
    if judge_base_url:
        judge = JudgeSettings(base_url=judge_base_url, model=judge_model or "", api_key_env=judge_api_key_env,
                              timeout_s=judge_timeout_s, max_retries=judge_max_retries, backoff_s=judge_backoff_s,
                              cache_path=judge_cache_path)
    chosen = extract_choice(solution_str, choices)
    acc = float(chosen == correct)
    well_formed = float(format_ok(solution_str))
    consistency, judged = _consistency(solution_str, choices, chosen, str((extra_info or {}).get("question", "")),
                                       judge)
    return {
        "score": acc_weight * acc + format_weight * well_formed + consistency_weight * consistency,
        "acc": acc,
        "format": well_formed,
        "consistency": consistency,
        "answered": float(chosen is not None),
        "judged": float(judged),
    }
