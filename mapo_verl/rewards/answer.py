"""Reading a model's multiple-choice answer: think blocks, ``<answer>`` tags, letters, option text.

Responses are expected as ``<think> reasoning </think> <answer> X </answer>`` (the prompt of
:func:`mapo_verl.data.mcqa.prompt_text` asks for it; Qwen3-Omni-Thinking's chat template
opens the ``<think>`` block itself, so the response may start inside it). Extraction is
lenient so that accuracy measures the answer, not the formatting (the format reward does
that): a letter (``B``, ``(B)``, ``B.``, ``[B]``, ``Option B``, ``the answer is B``), the
text of an option (exact, or contained in the answer with no other option), in an answer
tag or, without one, in the text after the think block. A response whose think block never
closes (cut at the length limit) has no answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mapo_verl.data.mcqa import LETTERS, normalize_text

__all__ = ["ResponseParts", "split_response", "parse_choice", "extract_choice", "reasoning_choice", "format_ok"]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_MARKUP = re.compile(r"\\boxed\{([^{}]*)\}|\\text\{([^{}]*)\}|[*_`$]+")
# the whole answer is one letter: "B", "(b)", "[B]", "B.", "B:"
_BARE_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?\s*[.:]?\s*$")
# a bracketed letter opening the answer: "(B) a dog"
_BRACKETED_LETTER = re.compile(r"^\s*[\(\[]([A-Za-z])[\)\]]")
# a capital letter with a separator opening the answer: "B. a dog", "B: a dog", "B) a dog", "B, not C"
_SEPARATED_LETTER = re.compile(r"^\s*([A-Z])\s*[.:),]\s+")
# a letter named as the answer / an option anywhere: "answer is (B)", "Option C", "choice: D"
_NAMED_LETTER = re.compile(r"(?i:\b(?:answer|option|choice)\b)(?:\s+is)?\s*[:=]?\s*[\(\[]?([A-Z])[\)\]]?(?![A-Za-z])")
# a concluding phrase whose rest of line is the answer: "The final answer is ...", "Answer: ..."
_CONCLUSION = re.compile(r"(?i:\b(?:final\s+)?answer\b(?:\s+is)?)\s*[:=]?\s*(\S.*)")


@dataclass(frozen=True)
class ResponseParts:
    """A response split at its think block.

    ``reasoning``: the think block's text (None without one); ``final``: the text after it
    (the whole response without one); ``answer``: the last ``<answer>`` tag's text in
    ``final`` (None without one); ``truncated``: a think block was opened and never closed.
    """

    reasoning: str | None
    final: str
    answer: str | None
    truncated: bool


def split_response(response: str) -> ResponseParts:
    close = response.rfind(_THINK_CLOSE)
    if close >= 0:
        head = response[:close]
        start = head.find(_THINK_OPEN)
        reasoning = head[start + len(_THINK_OPEN):] if start >= 0 else head
        final, truncated = response[close + len(_THINK_CLOSE):], False
    elif _THINK_OPEN in response:
        reasoning, final, truncated = response[response.find(_THINK_OPEN) + len(_THINK_OPEN):], "", True
    else:
        reasoning, final, truncated = None, response, False
    answers = _ANSWER_TAG.findall(final)
    return ResponseParts(reasoning, final, answers[-1].strip() if answers else None, truncated)


def _strip_markup(text: str) -> str:
    return _MARKUP.sub(lambda m: m.group(1) or m.group(2) or "", text)


def _option_pattern(choice: str) -> re.Pattern:
    words = normalize_text(choice).split(" ")
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE)


def _mentioned_options(text: str, choices: Sequence[str]) -> list[int]:
    """Options whose text occurs in ``text``, without those only occurring inside a longer matched option."""
    spans = {index: [m.span() for m in _option_pattern(choice).finditer(text)] for index, choice in enumerate(choices)}
    spans = {index: found for index, found in spans.items() if found}
    others = {index: [span for other, found in spans.items() if other != index for span in found] for index in spans}

    def covered(span, index):
        return any(start <= span[0] and span[1] <= end and (start, end) != span for start, end in others[index])

    return [index for index, found in spans.items() if not all(covered(span, index) for span in found)]


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """The option index a short answer names, or None when it names none or several.

    Order: the exact text of an option; a letter forming the whole answer, opening it in
    brackets, or opening it with a separator (``B. dog``); a letter named as answer /
    option / choice; the one option whose text the answer contains.
    """
    raw = _strip_markup(text).strip()
    norm = normalize_text(raw)
    if not norm:
        return None
    normalized = [normalize_text(choice) for choice in choices]
    if norm in normalized:
        return normalized.index(norm)
    for pattern in (_BARE_LETTER, _BRACKETED_LETTER, _SEPARATED_LETTER):
        match = pattern.match(raw)
        if match:
            index = LETTERS.index(match.group(1).upper())
            return index if index < len(choices) else None
    named = [LETTERS.index(m.group(1)) for m in _NAMED_LETTER.finditer(raw)]
    named = [index for index in named if index < len(choices)]
    if named:
        return named[-1]
    mentioned = _mentioned_options(raw, choices)
    return mentioned[0] if len(mentioned) == 1 else None


def extract_choice(response: str, choices: Sequence[str]) -> int | None:
    """The option index a full response commits to (None: no answer, an unknown or ambiguous one).

    With an ``<answer>`` tag after the think block, only its text counts. Without one, the
    text after the think block is read: a concluding "answer is ..." phrase (the last one
    that names an option), then the last line, then the whole text.
    """
    parts = split_response(response)
    if parts.truncated:
        return None
    if parts.answer is not None:
        return parse_choice(parts.answer, choices)
    region = parts.final
    for match in reversed(list(_CONCLUSION.finditer(region))):
        index = parse_choice(match.group(1), choices)
        if index is not None:
            return index
    lines = [line for line in region.splitlines() if line.strip()]
    if not lines:
        return None
    index = parse_choice(lines[-1], choices)
    return index if index is not None else parse_choice(region, choices)


def reasoning_choice(reasoning: str, choices: Sequence[str]) -> int | None:
    """The option a reasoning text arrives at: its last concluding phrase, else the option it mentions last.

    A mention is a bracketed letter, a named letter ("option B") or an option's text; for
    mentions ending at the same place the longer one wins ("dog barking" over "dog").
    """
    for match in reversed(list(_CONCLUSION.finditer(reasoning))):
        index = parse_choice(match.group(1), choices)
        if index is not None:
            return index
    last: tuple[int, int, int] | None = None  # (end, length, index)
    mentions = [(m.end(), LETTERS.index(m.group(1).upper()), m.end() - m.start())
                for m in re.finditer(r"[\(\[]([A-Za-z])[\)\]]", reasoning)]
    mentions += [(m.end(), LETTERS.index(m.group(1)), m.end() - m.start()) for m in _NAMED_LETTER.finditer(reasoning)]
    for index, choice in enumerate(choices):
        mentions += [(m.end(), index, m.end() - m.start()) for m in _option_pattern(choice).finditer(reasoning)]
    for end, index, length in mentions:
        if index < len(choices) and (last is None or (end, length) > (last[0], last[1])):
            last = (end, length, index)
    return None if last is None else last[2]


def format_ok(response: str) -> bool:
    """``[<think>] reasoning </think> <answer> text </answer>``.

    One think block with text (its opening tag may come from the chat template), one answer
    tag with text, nothing after it.
    """
    text = response.strip()
    if text.count(_THINK_CLOSE) != 1 or text.count(_THINK_OPEN) > 1:
        return False
    if text.count(_THINK_OPEN) == 1 and not text.startswith(_THINK_OPEN):
        return False
    match = re.fullmatch(r"(?:<think>)?(.*?)</think>\s*<answer>(.*?)</answer>", text, re.DOTALL)
    return bool(match and match.group(1).strip() and match.group(2).strip() and "<answer>" not in match.group(2))
