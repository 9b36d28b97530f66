"""Rule reward for the demo tone set (veRL custom reward function ``compute_score``).

``score = acc + 0.5 * format``: ``acc`` is 1 when the first answer-like word of the response
(a number for ``count``, yes/no for ``pitch``) equals the ground truth; ``format`` is 1 when
such a word of the right kind is present at all. The format term gives a random policy a
non-constant reward inside a group, so GRPO's advantages are not all zero from step one.
``acc`` is returned separately: it is the task reward the MAPO failure gate reads.
"""

from __future__ import annotations

import re

__all__ = ["FORMAT_WEIGHT", "extract_answer", "compute_score"]

FORMAT_WEIGHT = 0.5
_ANSWER = re.compile(r"\b(yes|no|\d+)\b", re.IGNORECASE)


def extract_answer(response: str, ground_truth: str) -> str | None:
    """The first word of the response that is an answer of the ground truth's kind, lower-cased."""
    numeric = ground_truth.strip().isdigit()
    for match in _ANSWER.finditer(response):
        word = match.group(1).lower()
        if word.isdigit() == numeric:
            return word
    return None


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs):
    """veRL reward-function signature; returns ``{"score", "acc", "format"}``."""
    answer = extract_answer(solution_str, str(ground_truth))
    acc = float(answer is not None and answer == str(ground_truth).strip().lower())
    well_formed = float(answer is not None)
    return {"score": acc + FORMAT_WEIGHT * well_formed, "acc": acc, "format": well_formed}
