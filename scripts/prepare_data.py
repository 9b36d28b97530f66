#!/usr/bin/env python
"""Convert audio multiple-choice sets (AVQA-, MMAU-, MMAR-, MMSU-style JSON / JSONL) to veRL parquet.

Writes ``train.parquet`` and ``val.parquet`` in veRL's RLHFDataset layout, one clip per row:

- ``prompt``: ``[{"role": "user", "content": "<audio>" + question + lettered options + instruction}]``
  (an optional system message first);
- ``audios``: ``[clip]``, the clip as an absolute path (``--audio-format path``, default), as
  ``{"bytes": file bytes, "path": name}`` (``bytes``: self-contained parquet) or as 16 kHz
  float samples (``array``: works with veRL's stock dataset class, large files);
- ``reward_model.ground_truth``: the correct option's letter; ``extra_info``: ``index``, ``split``,
  ``id``, ``question``, ``choices``, ``answer`` (letter), ``answer_text``, ``category``, ``source``.

Rows that cannot be used are never dropped silently: each is reported with its file, row
number and id under one of the kinds of ``mapo_verl.data.mcqa.BAD_ROW_KINDS`` (missing or
unreadable audio, no question, no / too few choices, repeated choices, answer not among
the choices, duplicate id), counted in a printed summary and listed in ``report.json``.

Examples::

    python scripts/prepare_data.py --input avqa/train_qa.json --audio-root avqa/audios --output-dir data/avqa
    python scripts/prepare_data.py --input avqa.json --val-input mmau-test-mini.json --audio-format bytes \\
        --output-dir data/avqa_mmau

Train with ``data.train_files=<output-dir>/train.parquet data.val_files=<output-dir>/val.parquet``
(the recipes read ``$MAPO_DATA_DIR/{train,val}.parquet``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mapo_verl.data.audio import DEFAULT_SAMPLING_RATE, AudioDecodeError, load_audio
from mapo_verl.data.mcqa import (
    AUDIO_PLACEHOLDER,
    BAD_ROW_KINDS,
    DEFAULT_INSTRUCTION,
    MCQARecord,
    RecordError,
    normalize_record,
    prompt_text,
    read_records_with_lines,
    row_id,
)

AUDIO_FORMATS = ("path", "bytes", "array")
ABILITY = "audio_mcqa"


@dataclass
class _Outcome:
    rows: dict[str, list[dict]] = field(default_factory=lambda: {"train": [], "val": []})
    bad: list[dict] = field(default_factory=list)
    read: int = 0


def _audio_item(record: MCQARecord, audio_format: str, sampling_rate: int, max_seconds: float):
    """Decode the clip (so unreadable or over-long audio is caught now, not during training) and store it as asked."""
    samples = load_audio(record.audio, sampling_rate)
    seconds = samples.size / sampling_rate
    if max_seconds and seconds > max_seconds:
        raise RecordError("clip_too_long", f"the clip is {seconds:.1f}s, over --max-clip-seconds {max_seconds:g} "
                                           "(the model's audio window would cut it)")
    if audio_format == "path":
        return str(record.audio.resolve())
    if audio_format == "bytes":
        return {"bytes": record.audio.read_bytes(), "path": record.audio.name}
    return samples.astype(np.float32).tolist()


def _row(record: MCQARecord, audio, *, data_source: str, source: str, instruction: str,
         system_prompt: str | None) -> dict:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": AUDIO_PLACEHOLDER + prompt_text(record.question, record.choices,
                                                                                 instruction)})
    return {
        "data_source": data_source,
        "prompt": messages,
        "audios": [audio],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": record.answer_letter},
        "extra_info": {
            "index": -1,  # set per split below
            "split": "",
            "id": record.id,
            "question": record.question,
            "choices": list(record.choices),
            "answer": record.answer_letter,
            "answer_text": record.choices[record.answer_index],
            "category": record.category,
            "source": source,
        },
    }


def convert(args: argparse.Namespace) -> _Outcome:
    """Read every input row, keep the good ones (by split hint), report the bad ones."""
    from tqdm import tqdm

    inputs = [(path, "train") for path in args.input] + [(path, "val") for path in args.val_input or []]
    loaded = [(Path(path), hint, read_records_with_lines(path)) for path, hint in inputs]
    outcome = _Outcome()
    accepted_ids: dict[str, str] = {}
    progress = tqdm(total=sum(len(rows) for *_, rows in loaded), desc="prepare_data", unit="row",
                    disable=args.no_progress)
    for path, hint, raw_rows in loaded:
        root = args.audio_root if hint == "train" else args.val_audio_root
        audio_root = Path(root) if root else path.parent
        data_source = args.data_source or path.stem
        for row_number, (line, raw) in enumerate(raw_rows):
            progress.update(1)
            outcome.read += 1
            where = f"{path.name}:{row_number}"
            try:
                record = normalize_record(raw, row=row_number, audio_root=audio_root, audio_ext=args.audio_ext,
                                          answer_index_base=args.answer_index_base)
                if record.id in accepted_ids:
                    raise RecordError("duplicate_id", f"id {record.id!r} is already used by {accepted_ids[record.id]}")
                if not record.audio.is_file():
                    raise RecordError("missing_audio", f"no file at {record.audio}")
                try:
                    audio = _audio_item(record, args.audio_format, args.sampling_rate, args.max_clip_seconds)
                except AudioDecodeError as error:
                    raise RecordError("unreadable_audio", str(error)) from error
            except RecordError as error:
                outcome.bad.append({"file": str(path), "row": row_number, "line": line,
                                    "id": row_id(raw, row_number), "kind": error.kind, "detail": error.detail})
                continue
            accepted_ids[record.id] = where
            outcome.rows[hint].append(_row(record, audio, data_source=data_source, source=path.name,
                                           instruction=args.instruction, system_prompt=args.system_prompt))
    progress.close()
    if not args.val_input:
        _split(outcome.rows, args.val_ratio, args.seed)
    for split, rows in outcome.rows.items():
        for index, row in enumerate(rows):
            row["extra_info"]["index"] = index
            row["extra_info"]["split"] = split
    return outcome


def _split(rows: dict[str, list[dict]], val_ratio: float, seed: int) -> None:
    """Move a seeded random ``val_ratio`` share of the train rows to val (at least one each when both can have one)."""
    pool = rows["train"]
    n_val = int(round(val_ratio * len(pool)))
    if val_ratio > 0 and len(pool) >= 2:
        n_val = min(max(n_val, 1), len(pool) - 1)
    order = np.random.default_rng(seed).permutation(len(pool))
    rows["val"] = [pool[i] for i in sorted(order[:n_val])]
    rows["train"] = [pool[i] for i in sorted(order[n_val:])]


def _write(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path, index=False)


def _report(args: argparse.Namespace, outcome: _Outcome, output_dir: Path) -> dict:
    by_kind = Counter(entry["kind"] for entry in outcome.bad)
    return {
        "inputs": [str(p) for p in args.input],
        "val_inputs": [str(p) for p in args.val_input or []],
        "settings": {key: getattr(args, key) for key in (
            "audio_format", "audio_root", "val_audio_root", "audio_ext", "sampling_rate", "val_ratio", "seed",
            "answer_index_base", "data_source", "instruction", "system_prompt", "max_clip_seconds")},
        "rows_read": outcome.read,
        "rows_written": {split: len(rows) for split, rows in outcome.rows.items()},
        "files": {split: str(output_dir / f"{split}.parquet") for split, rows in outcome.rows.items() if rows},
        "bad_rows": {
            "count": len(outcome.bad),
            "by_kind": {kind: by_kind.get(kind, 0) for kind in BAD_ROW_KINDS},
            "rows": outcome.bad,
        },
    }


def _print_summary(report: dict, report_path: Path, shown: int = 20) -> None:
    written = report["rows_written"]
    bad = report["bad_rows"]
    print(f"read {report['rows_read']} rows: {written['train']} train + {written['val']} val written, "
          f"{bad['count']} bad (not written)")
    for kind, count in bad["by_kind"].items():
        if count:
            print(f"  {kind:<22} {count}")
    for entry in bad["rows"][:shown]:
        where = f" line {entry['line']}" if entry.get("line") else f":{entry['row']}"
        print(f"  {Path(entry['file']).name}{where} id={entry['id']} {entry['kind']}: {entry['detail']}")
    if bad["count"] > shown:
        print(f"  ... {bad['count'] - shown} more")
    print(f"report: {report_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="JSON / JSONL files of the training pool")
    parser.add_argument("--val-input", nargs="*", help="JSON / JSONL files used as the validation split "
                                                       "(then --val-ratio is not used)")
    parser.add_argument("--output-dir", required=True, help="where train.parquet, val.parquet, report.json go")
    parser.add_argument("--audio-root", help="directory relative audio paths of --input files resolve under "
                                             "(default: each file's directory)")
    parser.add_argument("--val-audio-root", help="the same for --val-input files (default: each file's directory)")
    parser.add_argument("--audio-ext", default=".wav", help="suffix added to clip names without one "
                                                            "(AVQA's video_name); default .wav")
    parser.add_argument("--audio-format", choices=AUDIO_FORMATS, default="path",
                        help="store clips as absolute paths (default), file bytes, or decoded samples")
    parser.add_argument("--max-clip-seconds", type=float, default=30.0,
                        help="clips longer than this are bad rows (clip_too_long); default 30 s, the audio window "
                             "of Qwen2-Audio / Qwen2.5-Omni / Qwen3-Omni's feature extractor; 0: no limit")
    parser.add_argument("--sampling-rate", type=int, default=DEFAULT_SAMPLING_RATE,
                        help="rate of --audio-format array samples (default 16000)")
    parser.add_argument("--val-ratio", type=float, default=0.05, help="share of the pool held out as val")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--answer-index-base", type=int, choices=(0, 1), default=0,
                        help="integer answers count options from this (AVQA: 0)")
    parser.add_argument("--data-source", help="data_source of every row (default: the input file's stem)")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="answer instruction after the options")
    parser.add_argument("--system-prompt", help="an optional system message")
    parser.add_argument("--fail-on-bad-rows", action="store_true", help="exit with status 1 when any row is bad")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.val_ratio < 1:
        print(f"--val-ratio must be in [0, 1), got {args.val_ratio}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    outcome = convert(args)
    report = _report(args, outcome, output_dir)
    report_path = output_dir / "report.json"
    failure, written = None, []
    if not outcome.rows["train"]:
        failure = "no usable training rows: nothing written"
    else:
        for split, rows in outcome.rows.items():
            if not rows:
                continue
            try:
                _write(rows, output_dir / f"{split}.parquet")
                written.append(output_dir / f"{split}.parquet")
            except Exception as error:  # the report must not claim rows that are not on disk
                failure = f"writing {split}.parquet failed: {type(error).__name__}: {error}; nothing written"
                for path in written:
                    path.unlink()
                break
    if failure:
        report["error"] = failure
        report["rows_written"] = {split: 0 for split in report["rows_written"]}
        report["files"] = {}
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), errors="backslashreplace")
    _print_summary(report, report_path)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 1 if args.fail_on_bad_rows and report["bad_rows"]["count"] else 0


if __name__ == "__main__":
    sys.exit(main())
