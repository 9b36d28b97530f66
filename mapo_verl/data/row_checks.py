"""Load-time checks of every row of an audio RL dataset, with a report naming each bad row.

A row that cannot be rolled out correctly is found when the dataset is loaded, not minutes
into training (docs/DESIGN.md, "Bad input"). Every row is checked for:

- ``marker_clip_mismatch``: the number of ``<audio>`` markers in its messages differs from
  the number of clips in its audio column (an ``<audio>`` marker without a clip would be
  trained as text; two clips for one marker fail inside veRL);
- ``stray_placeholder``: the message text holds one of the model's own placeholder tokens
  (``<|AUDIO|>`` …), which the processor would pair with audio features that do not exist;
- ``unreadable_clip`` / ``empty_clip``: a clip that is missing, cannot be read, is empty, has
  non-finite samples, or is too short to give a single audio token;
- ``clip_not_samples``: a path or file bytes on a dataset class that hands clips to the
  processor undecoded (veRL's stock ``RLHFDataset``);
- ``clip_too_long``: a clip longer than the model's audio window, when
  ``data.row_checks.long_clips=reject`` (default ``truncate``: the processor cuts it to the
  window, and the report counts it);
- ``prompt_too_long``: a multimodal prompt (chat template and audio placeholders included)
  longer than ``data.max_prompt_length``; veRL cannot truncate those.

Clip files are checked from their headers (frames and rate), sample lists in place in the
Arrow table (lengths and finiteness, vectorised), so no clip is decoded or copied whole.

Settings (``data.row_checks.*``): ``enable`` (default true), ``strict`` (any bad row fails
the launch; default false: bad rows are filtered out and reported), ``long_clips``
(``truncate`` | ``reject``), ``report_dir`` (where ``row_checks_<files>.json`` goes).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mapo_verl.data.audio import AudioDecodeError, audio_header
from mapo_verl.data.mcqa import AUDIO_PLACEHOLDER

__all__ = [
    "ROW_PROBLEMS",
    "LONG_CLIP_POLICIES",
    "RowCheckSettings",
    "BadRow",
    "RowCheckReport",
    "BadRowsError",
    "check_rows",
]

ROW_PROBLEMS = (
    "marker_clip_mismatch",
    "stray_placeholder",
    "unreadable_clip",
    "empty_clip",
    "clip_not_samples",
    "clip_too_long",
    "prompt_too_long",
    "malformed_prompt",
)
LONG_CLIP_POLICIES = ("truncate", "reject")
_SETTINGS_KEY = "data.row_checks"

# (messages of each row, clip lengths in samples of each row) -> (prompt tokens, audio tokens per clip) per row
MultimodalLengths = Callable[[list[list[dict]], list[list[int]]], list[tuple[int, list[int]]]]


class BadRowsError(ValueError):
    """Bad rows in a dataset loaded with ``data.row_checks.strict=true``."""


@dataclass(frozen=True)
class RowCheckSettings:
    """``data.row_checks`` (see the module docstring)."""

    enable: bool = True
    strict: bool = False
    long_clips: str = "truncate"
    report_dir: str | None = None

    @classmethod
    def from_data_config(cls, data_config: Mapping | None) -> "RowCheckSettings":
        """Read ``row_checks`` of veRL's ``data`` config; an unknown key or value is named."""
        section = (data_config or {}).get("row_checks") or {}
        given = dict(section)
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {_SETTINGS_KEY}; allowed: {sorted(known)}")
        settings = cls(**given)
        for name in ("enable", "strict"):
            if not isinstance(getattr(settings, name), bool):
                raise ValueError(f"{_SETTINGS_KEY}.{name} must be true or false, got {getattr(settings, name)!r}")
        if settings.long_clips not in LONG_CLIP_POLICIES:
            raise ValueError(f"{_SETTINGS_KEY}.long_clips must be one of {list(LONG_CLIP_POLICIES)}, "
                             f"got {settings.long_clips!r}")
        return settings


@dataclass
class BadRow:
    """One rejected row: its position in the loaded dataset and in its file, its ids, the reason."""

    position: int
    reason: str
    detail: str
    file: str | None = None
    row: int | None = None
    id: str | None = None
    index: Any = None

    def describe(self) -> str:
        where = f"{Path(self.file).name}:{self.row}" if self.file is not None else f"row {self.position}"
        ids = "".join(f" {key}={value}" for key, value in (("id", self.id), ("index", self.index))
                      if value is not None)
        return f"{where}{ids} {self.reason}: {self.detail}"


@dataclass
class RowCheckReport:
    """What :func:`check_rows` found; ``bad_rows`` are dropped (or fail the launch when strict)."""

    rows_checked: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    truncated_clips: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad_positions(self) -> set[int]:
        return {bad.position for bad in self.bad_rows}

    def to_json(self) -> dict:
        by_reason = Counter(bad.reason for bad in self.bad_rows)
        return {
            "rows_checked": self.rows_checked,
            "rows_kept": self.rows_checked - len(self.bad_rows),
            "bad_rows": {"count": len(self.bad_rows),
                         "by_reason": {reason: by_reason.get(reason, 0) for reason in ROW_PROBLEMS},
                         "rows": [asdict(bad) for bad in self.bad_rows]},
            "truncated_clips": {"count": len(self.truncated_clips), "clips": self.truncated_clips},
            "seconds": round(self.seconds, 3),
        }

    def summary(self, shown: int = 10) -> str:
        lines = [f"row checks: {self.rows_checked} rows in {self.seconds:.1f}s, {len(self.bad_rows)} bad "
                 f"(filtered out), {len(self.truncated_clips)} clip(s) truncated to the model's audio window"]
        lines += [f"  {bad.describe()}" for bad in self.bad_rows[:shown]]
        if len(self.bad_rows) > shown:
            lines.append(f"  ... {len(self.bad_rows) - shown} more")
        return "\n".join(lines)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str))
        return path


class _RowProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _clip_samples(item: Any, rate: int, decodes_files: bool) -> int:
    """Length in samples at ``rate`` of a clip that is not a plain sample list (header only for files)."""
    if isinstance(item, Mapping) and item.get("array") is not None:
        if not item.get("sampling_rate"):
            raise _RowProblem("unreadable_clip", "an audio mapping with 'array' needs 'sampling_rate'")
        array = np.asarray(item["array"], dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise _RowProblem("unreadable_clip", "the clip has non-finite samples")
        return int(round(array.size * rate / int(item["sampling_rate"])))
    source = item
    if isinstance(item, Mapping):
        source = item.get("bytes") if item.get("bytes") is not None else item.get("path")
        if source is None:
            raise _RowProblem("unreadable_clip", f"an audio mapping needs 'bytes', 'array' or 'path', got {sorted(item)}")
    if not isinstance(source, (str, bytes, bytearray)):
        raise _RowProblem("unreadable_clip", f"a clip must be samples, a path or file bytes, got {type(source).__name__}")
    if not decodes_files:
        raise _RowProblem("clip_not_samples", "the clip is a path or file bytes, but this dataset class hands clips "
                                              "to the processor as they are: select data.custom_cls "
                                              "mapo_verl.data.dataset.AudioRLHFDataset")
    try:
        frames, file_rate = audio_header(source)
    except AudioDecodeError as error:
        raise _RowProblem("unreadable_clip", str(error)) from error
    return int(round(frames * rate / file_rate)) if file_rate > 0 else 0


def _sample_list_lengths(column) -> tuple[np.ndarray, list[list[int]], list[list[bool]]]:
    """Per row of a ``list<list<number>>`` Arrow chunk: clip count, clip lengths, clip finiteness."""
    import pyarrow.compute as pc

    counts = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    clips = pc.list_flatten(column)
    lengths = pc.fill_null(pc.list_value_length(clips), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(clips).to_numpy(zero_copy_only=False)
    finite = np.ones(len(lengths), dtype=bool)
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():  # rare: locate the clips holding them
        clip_of_value = np.repeat(np.arange(len(lengths)), lengths)
        finite[np.unique(clip_of_value[nonfinite])] = False
    bounds = np.cumsum(counts)[:-1]
    return (counts, [part.tolist() for part in np.split(lengths, bounds)],
            [part.tolist() for part in np.split(finite, bounds)])


def _is_sample_lists(arrow_type) -> bool:
    import pyarrow.types as pt

    return (pt.is_list(arrow_type) or pt.is_large_list(arrow_type)) and (
        pt.is_list(arrow_type.value_type) or pt.is_large_list(arrow_type.value_type)) and (
        pt.is_floating(arrow_type.value_type.value_type) or pt.is_integer(arrow_type.value_type.value_type))


def _texts(messages: Any) -> list[str]:
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, Mapping) for m in messages):
        raise _RowProblem("malformed_prompt", f"the prompt must be a list of chat messages, got {type(messages).__name__}")
    return [message["content"] for message in messages if isinstance(message.get("content"), str)]


def _row_ids(row_extra: Any, row_id: Any) -> tuple[str | None, Any]:
    extra = row_extra if isinstance(row_extra, Mapping) else {}
    identifier = extra.get("id", row_id)
    return (None if identifier is None else str(identifier)), extra.get("index")


def _check_markers(texts: list[str], n_clips: int, audio_key: str, placeholder_tokens: Sequence[str]) -> None:
    """The prompt's audio markers against its clips, and no model placeholder token in its text."""
    markers = sum(text.count(AUDIO_PLACEHOLDER) for text in texts)
    if markers != n_clips:
        detail = f"{markers} {AUDIO_PLACEHOLDER} marker(s) in the prompt but {n_clips} clip(s) in '{audio_key}'"
        if n_clips == 0:
            detail += " (the marker would be trained as plain text)"
        raise _RowProblem("marker_clip_mismatch", detail)
    stray = sorted({token for token in placeholder_tokens for text in texts if token in text})
    if stray:
        raise _RowProblem("stray_placeholder", f"the prompt text contains the model's placeholder token(s) "
                                               f"{stray}, which the processor would pair with audio or image "
                                               "features that do not exist")


def _clip_sample_count(clip: Any, finite: bool | None, sampling_rate: int, decodes_files: bool) -> int:
    """One clip's number of samples; ``finite`` is given for a sample-list column (``clip`` is then its length)."""
    if finite is not None:
        if not finite:
            raise _RowProblem("unreadable_clip", "the clip has non-finite samples")
        count = int(clip)
    elif isinstance(clip, (list, tuple, np.ndarray)):
        array = np.asarray(clip, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise _RowProblem("unreadable_clip", "the clip has non-finite samples")
        count = array.size
    else:
        count = _clip_samples(clip, sampling_rate, decodes_files)
    if count == 0:
        raise _RowProblem("empty_clip", "the clip has no samples")
    return count


def _prompt_length_problems(pending: list[tuple[int, list[dict], list[int]]], multimodal_lengths: MultimodalLengths,
                            max_prompt_length: int) -> Iterator[tuple[int, _RowProblem]]:
    """``(offset, problem)`` for the batch's multimodal prompts, measured together with their audio placeholders."""
    measured = multimodal_lengths([messages for _, messages, _ in pending], [s for *_, s in pending])
    for (offset, _, _), (tokens, per_clip) in zip(pending, measured, strict=True):
        empty = [number for number, count in enumerate(per_clip) if count == 0]
        if empty:
            yield offset, _RowProblem("empty_clip", f"clip(s) {empty} too short to give one audio token")
        elif tokens > max_prompt_length:
            yield offset, _RowProblem("prompt_too_long", f"the prompt is {tokens} tokens with its {sum(per_clip)} "
                                                         f"audio placeholders, data.max_prompt_length="
                                                         f"{max_prompt_length} (veRL cannot truncate a multimodal "
                                                         "prompt)")


def check_rows(
    batches: Iterable,
    *,
    prompt_key: str,
    audio_key: str,
    sampling_rate: int,
    window_samples: int | None,
    max_prompt_length: int,
    placeholder_tokens: Sequence[str],
    multimodal_lengths: MultimodalLengths | None,
    decodes_files: bool,
    long_clips: str = "truncate",
    locate: Callable[[int], tuple[str | None, int | None]] = lambda position: (None, None),
) -> RowCheckReport:
    """Check every row of ``batches`` (``pyarrow.Table`` slices of the dataset, in order).

    ``window_samples``: the model's audio window in samples (None: no limit);
    ``multimodal_lengths`` counts a multimodal prompt's tokens with its audio placeholders;
    ``decodes_files``: the dataset class decodes paths / bytes (else only sample lists work);
    ``locate`` maps a dataset position to ``(file, row in that file)`` for the report.
    """
    start = time.perf_counter()
    report = RowCheckReport()
    position = 0

    def fit_window(count: int, row_position: int, clip_number: int) -> int:
        if window_samples is None or count <= window_samples:
            return count
        seconds, window = count / sampling_rate, window_samples / sampling_rate
        if long_clips == "reject":
            raise _RowProblem("clip_too_long", f"the clip is {seconds:.2f}s, the model's audio window is "
                                               f"{window:.2f}s ({_SETTINGS_KEY}.long_clips=reject)")
        file, row = locate(row_position)
        report.truncated_clips.append({"position": row_position, "file": file, "row": row, "clip": clip_number,
                                       "seconds": round(seconds, 3), "window_seconds": window})
        return window_samples

    for batch in batches:
        names = set(batch.column_names)
        prompts = batch.column(prompt_key).to_pylist()
        extras = batch.column("extra_info").to_pylist() if "extra_info" in names else [None] * len(prompts)
        ids = batch.column("id").to_pylist() if "id" in names else [None] * len(prompts)
        if audio_key in names and _is_sample_lists(batch.schema.field(audio_key).type):
            _, lengths, finite = _sample_list_lengths(batch.column(audio_key).combine_chunks())
            items = None
        else:
            items = batch.column(audio_key).to_pylist() if audio_key in names else [None] * len(prompts)
        pending: list[tuple[int, list[dict], list[int]]] = []
        for offset, messages in enumerate(prompts):
            row_position = position + offset
            try:
                clips = (items[offset] or []) if items is not None else lengths[offset]
                _check_markers(_texts(messages), len(clips), audio_key, placeholder_tokens)
                samples = []
                for clip_number, clip in enumerate(clips):
                    try:
                        count = _clip_sample_count(clip, None if items is not None else finite[offset][clip_number],
                                                   sampling_rate, decodes_files)
                        samples.append(fit_window(count, row_position, clip_number))
                    except _RowProblem as problem:
                        raise _RowProblem(problem.reason, f"clip {clip_number}: {problem.detail}") from problem
                if samples and multimodal_lengths is not None:
                    pending.append((offset, messages, samples))
            except _RowProblem as problem:
                _add_bad(report, row_position, problem, extras[offset], ids[offset], locate)
        if pending:
            for offset, problem in _prompt_length_problems(pending, multimodal_lengths, max_prompt_length):
                _add_bad(report, position + offset, problem, extras[offset], ids[offset], locate)
        position += len(prompts)
    report.rows_checked = position
    report.bad_rows.sort(key=lambda bad: bad.position)
    report.seconds = time.perf_counter() - start
    return report


def _add_bad(report: RowCheckReport, position: int, problem: _RowProblem, extra: Any, row_id: Any, locate) -> None:
    file, row = locate(position)
    identifier, index = _row_ids(extra, row_id)
    report.bad_rows.append(BadRow(position, problem.reason, problem.detail, file, row, identifier, index))
