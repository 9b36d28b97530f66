"""Audio multiple-choice records: reading AVQA-, MMAU-, MMAR- and MMSU-style files, one prompt format.

Training data (``scripts/prepare_data.py``), the reward (:mod:`mapo_verl.rewards`) and the
evaluator (``scripts/evaluate.py``) all go through this module, so a question is shown to
the model the same way in training and in evaluation, and options are lettered the same
way the reward parses them.

Field names are matched by alias, so the common layouts need no conversion:

- AVQA style: ``question_text``, ``multi_choice`` (list), ``answer`` (0-based index),
  ``video_name`` (a clip name without extension, resolved under ``audio_root``);
- MMAU / MMAR style: ``question``, ``choices`` (list), ``answer`` (option text),
  ``audio_id`` / ``audio_path``, plus ``task`` / ``category`` / ``modality`` ...;
- MMSU style: ``choice_a`` ... ``choice_d`` columns, ``answer_gt`` (option text).
"""

from __future__ import annotations

import json
import numbers
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LETTERS",
    "AUDIO_PLACEHOLDER",
    "DEFAULT_INSTRUCTION",
    "BAD_ROW_KINDS",
    "RecordError",
    "UnreadableLine",
    "MCQARecord",
    "normalize_text",
    "answer_index",
    "read_records",
    "read_records_with_lines",
    "row_id",
    "normalize_record",
    "prompt_text",
]

LETTERS = string.ascii_uppercase
# veRL's RLHFDataset replaces this marker in a message with the row's next clip.
AUDIO_PLACEHOLDER = "<audio>"
DEFAULT_INSTRUCTION = (
    "Think about the question step by step inside <think> </think> tags, then give the letter of "
    "the correct option inside <answer> </answer> tags."
)
# Every reason a source row can be rejected (prepare_data reports each with its row id).
BAD_ROW_KINDS = (
    "missing_audio",
    "unreadable_audio",
    "no_question",
    "no_choices",
    "duplicate_choices",
    "answer_not_in_choices",
    "duplicate_id",
    "text_encoding",
    "invalid_json",
    "clip_too_long",
)

_ID_KEYS = ("id", "question_id", "qid", "uniq_id", "sample_id")
_QUESTION_KEYS = ("question", "question_text", "query")
_CHOICE_LIST_KEYS = ("choices", "multi_choice", "options", "choice")
_CHOICE_COLUMN = re.compile(r"^(?:choice|option)[_\-\s]?([a-zA-Z])$")
_ANSWER_KEYS = ("answer", "answer_gt", "label", "correct_answer", "gt")
_AUDIO_KEYS = ("audio_path", "audio_id", "audio", "audio_file", "wav", "wav_path", "path", "video_name")
# Metadata kept for per-category tables and for the training rows' extra_info.
_CATEGORY_KEYS = ("category", "task", "task_name", "modality", "question_type", "dataset")
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])[\).:]\s+")


class RecordError(ValueError):
    """A source row that cannot become a training / evaluation item; ``kind`` is in :data:`BAD_ROW_KINDS`."""

    def __init__(self, kind: str, detail: str):
        if kind not in BAD_ROW_KINDS:
            raise ValueError(f"unknown bad-row kind {kind!r}")
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class UnreadableLine:
    """A line of a JSON-lines file that is not a JSON value; :func:`normalize_record` reports it."""

    line: int
    detail: str


@dataclass
class MCQARecord:
    """One multiple-choice question about one clip; ``answer_index`` indexes ``choices``."""

    id: str
    question: str
    choices: list[str]
    answer_index: int
    audio: Path
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_index]

    @property
    def category(self) -> str | None:
        return next((self.meta[key] for key in _CATEGORY_KEYS if self.meta.get(key)), None)


def normalize_text(text: Any) -> str:
    """Case-folded, whitespace-collapsed text without surrounding punctuation or quotes."""
    text = re.sub(r"\s+", " ", str(text)).strip().casefold()
    return text.strip(" .,;:!?'\"`*")


def read_records(path: str | Path) -> list[dict | UnreadableLine]:
    """The rows of a JSON list, a JSON object holding one list, an id → row mapping, or JSON lines."""
    return [row for _, row in read_records_with_lines(path)]


def read_records_with_lines(path: str | Path) -> list[tuple[int | None, dict | UnreadableLine]]:
    """``(line number, row)`` for every row of :func:`read_records` (the line is None outside JSON lines).

    Bytes that are not UTF-8 do not reject the file: they are kept as lone surrogates
    (``surrogateescape``), so that :func:`normalize_record` rejects only the rows holding them.
    A JSON-lines line that does not parse becomes an :class:`UnreadableLine` with its number.
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if path.suffix == ".jsonl":
        rows: list[tuple[int | None, dict | UnreadableLine]] = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as error:
                rows.append((line_no, UnreadableLine(line_no, f"line {line_no}: invalid JSON: {error}")))
        return rows
    data = json.loads(text)
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list) and value and isinstance(value[0], dict)]
        if len(lists) == 1:
            data = lists[0]
        elif data and all(isinstance(value, dict) for value in data.values()):
            data = [{"id": key, **value} for key, value in data.items()]
    if isinstance(data, list):
        return [(None, row) for row in data]
    raise ValueError(f"{path}: expected a list of rows, an object with one list of rows, or id -> row objects")


def _first(raw: Mapping, keys: Sequence[str]) -> Any:
    return next((raw[key] for key in keys if raw.get(key) not in (None, "")), None)


def _bad_text(value: Any, where: str = "") -> str | None:
    """Where in ``value`` a string is not valid Unicode text (a lone surrogate: undecodable bytes or a bad escape)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            bad = value[error.start]
            kind = ("bytes that are not UTF-8" if "\udc80" <= bad <= "\udcff" else "a lone surrogate")
            return f"{where or 'the text'} holds {kind} ({bad!r} at character {error.start})"
        return None
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _bad_text(item, f"{where}[{key!r}]" if where else f"field {key!r}")
        if found:
            return found
    return None


def row_id(raw: Any, row: int) -> str:
    """A source row's id field (``id``, ``question_id``, ...), else its 0-based position ``row``."""
    value = _first(raw, _ID_KEYS) if isinstance(raw, Mapping) else None
    return str(row) if value is None or _bad_text(str(value)) else str(value)


def _choices(raw: Mapping) -> list[str]:
    listed = _first(raw, _CHOICE_LIST_KEYS)
    if listed is not None:
        if isinstance(listed, str):
            try:
                listed = json.loads(listed)
            except json.JSONDecodeError:
                listed = [listed]
        choices = [str(choice).strip() for choice in listed if str(choice).strip()]
    else:
        columns = sorted((match.group(1).upper(), key) for key in raw if (match := _CHOICE_COLUMN.match(key)))
        choices = [str(raw[key]).strip() for _, key in columns if raw[key] not in (None, "")]
    # "(A) dog", "(B) cat", ...: drop the letters when every option carries its own in order
    prefixes = [_LETTER_PREFIX.match(choice) for choice in choices]
    if choices and all(m and m.group(1) == LETTERS[i] for i, m in enumerate(prefixes)):
        choices = [choice[m.end():].strip() for choice, m in zip(choices, prefixes, strict=True)]
    return choices


def answer_index(answer: Any, choices: Sequence[str], index_base: int = 0) -> int:
    """The index of ``answer`` among ``choices``: an integer index (counted from ``index_base``),
    an option's text, a letter (``B``, ``(B)``) or a lettered option (``B. dog``).

    Raises :class:`RecordError` (``answer_not_in_choices``) when it names no option.
    """
    if isinstance(answer, bool):
        raise RecordError("answer_not_in_choices", f"answer {answer!r} is not an option")
    if isinstance(answer, numbers.Integral):
        index = int(answer) - index_base
        if 0 <= index < len(choices):
            return index
        raise RecordError("answer_not_in_choices", f"answer index {answer} outside {len(choices)} options "
                                                   f"(index base {index_base})")
    normalized = [normalize_text(choice) for choice in choices]
    text = normalize_text(answer)
    if text in normalized:
        return normalized.index(text)
    prefix = _LETTER_PREFIX.match(str(answer) + " ")
    letter = str(answer).strip().strip("()").upper()
    if prefix or (len(letter) == 1 and letter in LETTERS):
        index = LETTERS.index(prefix.group(1) if prefix else letter)
        if index < len(choices):
            rest = normalize_text(str(answer)[prefix.end():]) if prefix else ""
            if not rest or rest == normalized[index]:
                return index
    raise RecordError("answer_not_in_choices", f"answer {answer!r} is not one of {choices}")


def _audio_path(value: Any, audio_root: Path, audio_ext: str) -> Path:
    if isinstance(value, Mapping):  # {"path": ...} as exported by HF datasets
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise RecordError("missing_audio", "the row names no audio file")
    path = Path(value.strip())
    if not path.suffix and audio_ext:
        path = path.with_name(path.name + audio_ext)
    return path if path.is_absolute() else (audio_root / path)


def normalize_record(raw: Mapping, *, row: int, audio_root: str | Path, audio_ext: str = ".wav",
                     answer_index_base: int = 0) -> MCQARecord:
    """Map one source row to an :class:`MCQARecord`, or raise :class:`RecordError` saying why not.

    ``row`` (0-based position in its file) is the id when the row has none; relative audio
    paths resolve under ``audio_root``; a clip name without a suffix gets ``audio_ext``;
    integer answers are option indices counted from ``answer_index_base``. The audio file
    itself is not opened here (see :func:`mapo_verl.data.audio.load_audio`).
    """
    if isinstance(raw, UnreadableLine):
        kind = "text_encoding" if _bad_text(raw.detail) else "invalid_json"
        raise RecordError(kind, raw.detail.encode("utf-8", errors="backslashreplace").decode())
    if not isinstance(raw, Mapping):
        raise RecordError("no_question", f"row is a {type(raw).__name__}, not an object")
    encoding_problem = _bad_text(raw)
    if encoding_problem:
        raise RecordError("text_encoding", encoding_problem)
    record_id = row_id(raw, row)
    question = _first(raw, _QUESTION_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise RecordError("no_question", f"none of the fields {list(_QUESTION_KEYS)} holds a question")
    choices = _choices(raw)
    if len(choices) < 2:
        raise RecordError("no_choices", f"{len(choices)} option(s); a multiple-choice row needs at least 2")
    if len(choices) > len(LETTERS):
        raise RecordError("no_choices", f"{len(choices)} options; at most {len(LETTERS)} can be lettered")
    normalized = [normalize_text(choice) for choice in choices]
    if len(set(normalized)) != len(normalized):
        raise RecordError("duplicate_choices", f"options repeat: {choices}")
    answer = _first(raw, _ANSWER_KEYS)
    if answer is None:
        raise RecordError("answer_not_in_choices", f"none of the fields {list(_ANSWER_KEYS)} holds an answer")
    index = answer_index(answer, choices, answer_index_base)
    audio = _audio_path(_first(raw, _AUDIO_KEYS), Path(audio_root), audio_ext)
    used = {*_ID_KEYS, *_QUESTION_KEYS, *_CHOICE_LIST_KEYS, *_ANSWER_KEYS, *_AUDIO_KEYS}
    meta = {
        str(key): str(value)
        for key, value in raw.items()
        if key not in used and not _CHOICE_COLUMN.match(str(key)) and isinstance(value, (str, int, float))
        and not isinstance(value, bool)
    }
    return MCQARecord(record_id, question.strip(), choices, index, audio, meta)


def prompt_text(question: str, choices: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The text shown with the clip: the question, the lettered options, the answer instruction."""
    options = "\n".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
    return f"{question}\nOptions:\n{options}\n{instruction}".strip()
