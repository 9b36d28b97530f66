#!/usr/bin/env python
"""Evaluate an audio-language model on MMAU test-mini / MMAR / MMSU-format multiple-choice files.

Each question is shown as in training (``mapo_verl.data.mcqa.prompt_text``: question, lettered
options, the think / answer instruction), the answer is read as the reward reads it
(``mapo_verl.rewards.answer.extract_choice``), and accuracy is tabulated overall and per
category (MMAU: task and difficulty; MMAR: modality and category; MMSU: category and task;
``--group-by`` chooses other fields). Tables are printed and saved as JSON and markdown,
with every prediction as JSON lines.

Generation uses vLLM when it is installed (``--backend auto``), else HF ``generate``.
``--predictions`` re-scores saved predictions without a model; a question without a saved
prediction counts as wrong (``overall``), and ``answered`` gives the accuracy over the
questions that have one.

Examples::

    python scripts/evaluate.py --model runs/mapo/hf_ckpt --data mmau-test-mini.json --audio-root mmau/ \
        --output-dir eval/
    python scripts/evaluate.py --data mmar.json --predictions eval/mmar.predictions.jsonl --output-dir eval/
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from mapo_verl.data.audio import DEFAULT_SAMPLING_RATE, AudioDecodeError, load_audio
from mapo_verl.data.mcqa import (
    DEFAULT_INSTRUCTION,
    LETTERS,
    MCQARecord,
    RecordError,
    normalize_record,
    prompt_text,
    read_records_with_lines,
    row_id,
)
from mapo_verl.rewards.answer import extract_choice

# Fields the benchmarks' own papers report accuracy by.
BENCHMARK_GROUPS = {
    "mmau": ("task", "difficulty"),
    "mmar": ("modality", "category"),
    "mmsu": ("category", "task_name"),
    "generic": ("category",),
}


def detect_benchmark(path: Path) -> str:
    name = path.name.lower()
    return next((key for key in ("mmau", "mmar", "mmsu") if key in name), "generic")


def load_items(path: Path, *, audio_root: Path | None, audio_ext: str,
               answer_index_base: int) -> tuple[list[MCQARecord], list[dict]]:
    """The usable questions of a benchmark file and the skipped rows (with row, id, kind and detail)."""
    items, skipped, seen = [], [], set()
    for row, (line, raw) in enumerate(read_records_with_lines(path)):
        try:
            record = normalize_record(raw, row=row, audio_root=audio_root or path.parent, audio_ext=audio_ext,
                                      answer_index_base=answer_index_base)
            if record.id in seen:
                raise RecordError("duplicate_id", f"id {record.id!r} appears earlier in the file")
            if not record.audio.is_file():
                raise RecordError("missing_audio", f"no file at {record.audio}")
        except RecordError as error:
            skipped.append({"row": row, "line": line, "id": row_id(raw, row), "kind": error.kind,
                            "detail": error.detail})
            continue
        seen.add(record.id)
        items.append(record)
    return items, skipped


def messages_for(record: MCQARecord, audio, instruction: str, system_prompt: str | None) -> list[dict]:
    """The chat messages of one question, in the structure veRL's dataset builds from ``<audio>`` + text."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": [
        {"type": "audio", "audio": audio},
        {"type": "text", "text": prompt_text(record.question, record.choices, instruction)},
    ]})
    return messages


# ---------------------------------------------------------------------------------------- scoring


def score(items: Sequence[MCQARecord], responses: dict[str, str], group_fields: Sequence[str],
          missing_as_wrong: bool = False) -> list[dict]:
    """One result per item: the letter read from its response (None: no answer) and whether it is correct.

    Items without a response are wrong results marked ``missing`` when ``missing_as_wrong``
    (saved predictions that lack them), else left out (their audio could not be decoded).
    """
    results = []
    for record in items:
        if record.id not in responses:
            if missing_as_wrong:
                results.append({"id": record.id, "answer": record.answer_letter, "prediction": None, "correct": False,
                                "groups": {name: record.meta.get(name) for name in group_fields
                                           if record.meta.get(name) is not None},
                                "response": None, "missing": True})
            continue
        chosen = extract_choice(responses[record.id], record.choices)
        results.append({
            "id": record.id,
            "answer": record.answer_letter,
            "prediction": None if chosen is None else LETTERS[chosen],
            "correct": chosen == record.answer_index,
            "groups": {name: record.meta.get(name) for name in group_fields if record.meta.get(name) is not None},
            "response": responses[record.id],
        })
    return results


def _cell(correct: int, total: int) -> dict:
    return {"correct": correct, "total": total, "accuracy": 100.0 * correct / total if total else 0.0}


def accuracy_tables(results: Sequence[dict], group_fields: Sequence[str]) -> dict:
    """``{"overall": cell, "answered": cell, "by": {field: {value: cell}}}``; a cell is
    ``{correct, total, accuracy (%)}``; ``answered`` leaves out the results marked ``missing``."""
    by: dict[str, dict[str, list[int]]] = {name: defaultdict(lambda: [0, 0]) for name in group_fields}
    for result in results:
        for name, value in result["groups"].items():
            by[name][value][0] += int(result["correct"])
            by[name][value][1] += 1
    return {
        "overall": _cell(sum(r["correct"] for r in results), len(results)),
        "answered": _cell(sum(r["correct"] for r in results if not r.get("missing")),
                          sum(1 for r in results if not r.get("missing"))),
        "by": {name: {value: _cell(*counts) for value, counts in sorted(table.items())}
               for name, table in by.items() if table},
    }


def markdown(title: str, tables: dict, skipped: int) -> str:
    lines = [f"## {title}", "", f"{tables['overall']['total']} evaluated, {skipped} skipped", ""]
    overall, answered = tables["overall"], tables.get("answered", tables["overall"])
    if answered["total"] != overall["total"]:
        lines[-1:-1] = [f"{overall['total'] - answered['total']} without a prediction count as wrong; over the "
                        f"{answered['total']} answered: {answered['accuracy']:.2f}%"]
    sections = tables["by"] or {"all": {}}
    for name, table in sections.items():
        lines += [f"| {name} | correct | total | accuracy (%) |", "|---|---:|---:|---:|"]
        lines += [f"| {value} | {c['correct']} | {c['total']} | {c['accuracy']:.2f} |" for value, c in table.items()]
        lines += [f"| **overall** | {overall['correct']} | {overall['total']} | {overall['accuracy']:.2f} |", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- generation


def _load_processor(model_path: str):
    from transformers import AutoProcessor

    from mapo_verl.patches.processors import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    return AutoProcessor.from_pretrained(model_path)


def _decoded_batches(items, batch_size, sampling_rate, skipped, progress=None):
    """Batches of (record, samples); clips that cannot be decoded go to ``skipped`` (and advance ``progress``)."""
    batch = []
    for record in items:
        try:
            batch.append((record, load_audio(record.audio, sampling_rate)))
        except AudioDecodeError as error:
            skipped.append({"row": None, "id": record.id, "kind": "unreadable_audio", "detail": str(error)})
            if progress is not None:
                progress.update(1)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def generate_hf(items, args, skipped) -> dict[str, str]:
    """Greedy (or sampled, ``--temperature > 0``) HF ``generate``, left-padded batches."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForMultimodalLM

    processor = _load_processor(args.model)
    processor.tokenizer.padding_side = "left"
    sampling_rate = getattr(processor.feature_extractor, "sampling_rate", DEFAULT_SAMPLING_RATE)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    model = AutoModelForMultimodalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
    model = getattr(model, "thinker", model)  # the full Omni checkpoints: generate text with the thinker
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {"do_sample": False}
    responses = {}
    progress = tqdm(total=len(items), desc="generate (hf)", unit="item", disable=args.no_progress)
    for batch in _decoded_batches(items, args.batch_size, sampling_rate, skipped, progress):
        texts = [processor.apply_chat_template(messages_for(r, a, args.instruction, args.system_prompt),
                                               add_generation_prompt=True, tokenize=False) for r, a in batch]
        inputs = processor(text=texts, audio=[a for _, a in batch], sampling_rate=sampling_rate,
                           return_tensors="pt", padding=True).to(device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(dtype)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling)
        decoded = processor.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        responses.update({record.id: text for (record, _), text in zip(batch, decoded, strict=True)})
        progress.update(len(batch))
    progress.close()
    return responses


def generate_vllm(items, args, skipped) -> dict[str, str]:
    """vLLM offline generation; the prompt text comes from the model's own chat template."""
    from vllm import LLM, SamplingParams

    processor = _load_processor(args.model)
    sampling_rate = getattr(processor.feature_extractor, "sampling_rate", DEFAULT_SAMPLING_RATE)
    llm = LLM(model=args.model, tensor_parallel_size=args.tensor_parallel_size, limit_mm_per_prompt={"audio": 1},
              max_model_len=args.max_model_len, seed=0)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_new_tokens)
    responses = {}
    for batch in _decoded_batches(items, args.batch_size, sampling_rate, skipped):
        requests = [{
            "prompt": processor.apply_chat_template(messages_for(r, a, args.instruction, args.system_prompt),
                                                    add_generation_prompt=True, tokenize=False),
            "multi_modal_data": {"audio": [(a, sampling_rate)]},
        } for r, a in batch]
        outputs = llm.generate(requests, params, use_tqdm=not args.no_progress)
        responses.update({record.id: out.outputs[0].text for (record, _), out in zip(batch, outputs, strict=True)})
    return responses


def pick_backend(name: str) -> str:
    if name == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    return name


# -------------------------------------------------------------------------------------------- main


def evaluate_file(path: Path, args) -> dict:
    benchmark = args.benchmark if args.benchmark != "auto" else detect_benchmark(path)
    group_fields = args.group_by or BENCHMARK_GROUPS[benchmark]
    items, skipped = load_items(path, audio_root=Path(args.audio_root) if args.audio_root else None,
                                audio_ext=args.audio_ext, answer_index_base=args.answer_index_base)
    if args.limit:
        items = items[: args.limit]
    if args.predictions:
        saved = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
        responses = {str(entry["id"]): entry["response"] for entry in saved}
        missing = [record for record in items if record.id not in responses]
        skipped += [{"row": None, "id": r.id, "kind": "no_prediction", "detail": "not in --predictions"}
                    for r in missing]
        backend = "predictions"
    else:
        backend = pick_backend(args.backend)
        responses = (generate_vllm if backend == "vllm" else generate_hf)(items, args, skipped)
    results = score(items, responses, group_fields, missing_as_wrong=backend == "predictions")
    tables = accuracy_tables(results, group_fields)
    stem = path.stem
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{stem} ({benchmark}; model: {args.model or args.predictions}; backend: {backend})"
    table_md = markdown(title, tables, len(skipped))
    summary = {"file": str(path), "benchmark": benchmark, "model": args.model, "backend": backend,
               "group_by": list(group_fields), **tables, "skipped": skipped}
    (output_dir / f"{stem}.accuracy.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (output_dir / f"{stem}.accuracy.md").write_text(table_md + "\n")
    with (output_dir / f"{stem}.predictions.jsonl").open("w") as handle:
        for result in results:
            if not result.get("missing"):  # the file holds responses; re-scoring it must find them all
                handle.write(json.dumps(result, ensure_ascii=False) + "\n")
    print(table_md)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help="benchmark JSON / JSONL files")
    parser.add_argument("--model", help="HF model directory or id (not needed with --predictions)")
    parser.add_argument("--predictions", help="score these saved predictions (JSON lines with id and response)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--benchmark", choices=("auto", *BENCHMARK_GROUPS), default="auto",
                        help="sets the default --group-by; auto: from the file name")
    parser.add_argument("--group-by", nargs="+", help="metadata fields to tabulate accuracy by")
    parser.add_argument("--audio-root", help="directory relative audio paths resolve under (default: the file's)")
    parser.add_argument("--audio-ext", default=".wav")
    parser.add_argument("--answer-index-base", type=int, choices=(0, 1), default=0)
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--system-prompt")
    parser.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=1200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="evaluate the first N usable items only")
    parser.add_argument("--dtype", default="bfloat16", help="HF backend weights dtype")
    parser.add_argument("--device", help="HF backend device (default: cuda if available)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM backend")
    parser.add_argument("--max-model-len", type=int, default=8192, help="vLLM backend")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model and not args.predictions:
        parser.error("give --model (generate) or --predictions (re-score)")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.predictions and len(args.data) > 1:
        parser.error("--predictions re-scores one --data file at a time")
    for path in args.data:
        evaluate_file(Path(path), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
