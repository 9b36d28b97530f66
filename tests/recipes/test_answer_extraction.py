"""A table of answer-extraction cases (mapo_verl.rewards.answer): letters, option text, tags, think blocks."""

import pytest

from mapo_verl.rewards.answer import extract_choice, format_ok, parse_choice, reasoning_choice, split_response

CHOICES = ["a dog barking", "a car horn", "rain", "dog"]

# (response, expected option index or None)
EXTRACTION_CASES = [
    # answer tags after a think block
    ("<think>I hear barking.</think><answer>A</answer>", 0),
    ("<think>...</think>\n<answer> (B) </answer>", 1),
    ("<think>...</think><answer>[C]</answer>", 2),
    ("<think>...</think><answer>b</answer>", 1),
    ("<think>...</think><answer>B.</answer>", 1),
    ("<think>...</think><answer>C. rain</answer>", 2),
    ("<think>...</think><answer>(A) a dog barking</answer>", 0),
    ("<think>...</think><answer>rain</answer>", 2),
    ("<think>...</think><answer>Rain.</answer>", 2),
    ("<think>...</think><answer>A car horn</answer>", 1),  # option text, not the letter A
    ("<think>...</think><answer>dog</answer>", 3),  # exact text beats containment in "a dog barking"
    ("<think>...</think><answer>The dog is barking loudly</answer>", 3),  # contains "dog" only, not "a dog barking"
    ("<think>...</think><answer>a dog barking in the yard</answer>", 0),  # "dog" only inside the longer option
    ("<think>...</think><answer>**D**</answer>", 3),
    ("<think>...</think><answer>\\boxed{C}</answer>", 2),
    ("<think>...</think><answer>Option D</answer>", 3),
    ("<think>...</think><answer>The answer is B</answer>", 1),
    ("<think>...</think><answer>E</answer>", None),  # no option E
    ("<think>...</think><answer></answer>", None),
    ("<think>...</think><answer>rain or a car horn</answer>", None),  # two options: ambiguous
    ("<think>...</think><answer>A</answer><answer>C</answer>", 2),  # the last tag counts
    ("<answer>A</answer>", 0),  # no think block
    ("<ANSWER>c</ANSWER>", 2),
    # the answer tag counts only after the think block
    ("<think>maybe <answer>A</answer></think> The answer is (C).", 2),
    # truncated reasoning: no answer, even if the reasoning names one
    ("<think>The answer is (A) because", None),
    # Qwen3-Omni-Thinking: the template opened <think>, the response starts inside it
    ("It sounds like honking.</think>\n\n<answer>B</answer>", 1),
    # no tags: concluding phrases, last line, whole text
    ("The final answer is (C).", 2),
    ("Answer: a car horn", 1),
    ("I considered rain. The answer is D, not A.", 3),
    ("Reasoning about rain...\nB", 1),
    ("I hear a car horn.", 1),
    ("It is either rain or a dog.", None),
    ("", None),
    ("<think></think>", None),
]


@pytest.mark.parametrize("response,expected", EXTRACTION_CASES)
def test_extract_choice(response, expected):
    assert extract_choice(response, CHOICES) == expected


@pytest.mark.parametrize("text,expected", [
    ("A", 0), ("(d)", 3), ("[B]", 1), ("C:", 2), ("B) a car horn", 1), ("a car horn", 1), ("A CAR HORN!", 1),
    ("choice: C", 2), ("Z", None), ("", None), ("  ", None), ("A dog", 3),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, CHOICES) == expected


@pytest.mark.parametrize("response,expected", [
    ("<think>reasoning</think><answer>B</answer>", True),
    ("<think>\nreasoning\n</think>\n\n<answer>\nB\n</answer>\n", True),
    ("reasoning</think><answer>B</answer>", True),  # the template opened the think block
    ("<think>reasoning</think><answer>B</answer> trailing text", False),
    ("<think>reasoning</think>B", False),
    ("<answer>B</answer>", False),
    ("<think></think><answer>B</answer>", False),  # empty reasoning
    ("<think>reasoning</think><answer> </answer>", False),  # empty answer
    ("<think>a</think><think>b</think><answer>B</answer>", False),
    ("<think>a</think><answer>A</answer><answer>B</answer>", False),
    ("preamble <think>reasoning</think><answer>B</answer>", False),
    ("<think>never closed <answer>B</answer>", False),
])
def test_format_ok(response, expected):
    assert format_ok(response) is expected


@pytest.mark.parametrize("reasoning,expected", [
    ("Option A would be barking; but it honks, so the answer is B.", 1),
    ("It could be (A) or (C). Listening again, it is (C).", 2),
    ("Barking? No. Honking? No. It is rain.", 2),
    ("It is a dog barking.", 0),  # "a dog barking" ends where "dog" would not: longer mention
    ("So the answer is C, not D.", 2),
    ("I cannot tell.", None),
])
def test_reasoning_choice(reasoning, expected):
    assert reasoning_choice(reasoning, CHOICES) == expected


def test_split_response_parts():
    parts = split_response("<think> why </think> then <answer> B </answer>")
    assert (parts.reasoning, parts.answer, parts.truncated) == (" why ", "B", False)
    assert split_response("plain").reasoning is None and split_response("plain").final == "plain"
    truncated = split_response("<think> cut")
    assert truncated.truncated and truncated.final == "" and truncated.answer is None
