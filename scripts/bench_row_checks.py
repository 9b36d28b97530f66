#!/usr/bin/env python
"""Cost of the load-time row checks (mapo_verl.data.row_checks) per 10k rows, on the tiny demo model.

Writes a ROWS-row parquet of the demo's tone questions (clips of 0.4-1.5 s) in each clip
format — ``array`` (sample lists in the parquet, checked in place in the Arrow table) and
``path`` (WAV files, checked from their headers) — then loads it with
``AudioRLHFDataset`` with the checks off and on, several times each, interleaved. Prints
and saves JSON: per format the load seconds with and without checks (median), the check's
own seconds, and both scaled to 10k rows; also the added CPU seconds of this process (less
sensitive than wall time to other jobs on a shared machine) and the load average.

    python scripts/bench_row_checks.py [--rows 10000] [--repeats 3] [--out runs/bench_row_checks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np


def _rows(demo_rows: list[dict], count: int) -> list[dict]:
    rows = []
    for index in range(count):
        row = demo_rows[index % len(demo_rows)]
        prompt = [{**message, "content": f"{message['content']} (question {index})"} for message in row["prompt"]]
        rows.append({**row, "prompt": prompt, "extra_info": {**row["extra_info"], "index": index}})
    return rows


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def _write_sample_lists(rows: list[dict], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = [np.asarray(row["audios"][0], dtype=np.float32) for row in rows]
    inner = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum([c.size for c in clips])]),
                                              type=pa.int32()), pa.array(np.concatenate(clips)))
    audios = pa.ListArray.from_arrays(pa.array(np.arange(len(clips) + 1), type=pa.int32()), inner)
    others = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "audios"} for row in rows])
    pq.write_table(others.append_column("audios", audios), path)


def _load_seconds(dataset_cls, path: str, tokenizer, processor, enable: bool,
                  report_dir: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process) of one dataset load, and the report's check seconds."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"max_prompt_length": 96, "audio_key": "audios", "filter_overlong_prompts": False,
                               "return_raw_chat": True, "cache_dir": report_dir,
                               "row_checks": {"enable": enable, "report_dir": report_dir}})
    start, cpu_start = time.perf_counter(), time.process_time()
    dataset = dataset_cls(path, tokenizer, config, processor)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    check_seconds = 0.0
    if enable:
        report = json.loads(next(Path(report_dir).glob("row_checks_*.json")).read_text())
        check_seconds = report["seconds"]
        assert report["bad_rows"]["count"] == 0, report["bad_rows"]["rows"][:3]
    assert len(dataset) > 0
    return seconds, cpu_seconds, check_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", default="array,path")
    parser.add_argument("--out", default="runs/bench_row_checks.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import pandas as pd

    datasets.disable_caching()
    from mapo_verl.demo import ensure_demo_assets

    assets = ensure_demo_assets()
    import verl  # noqa: F401  (the MAPO plugin: processor patches, row checks)
    from verl.utils import hf_processor, hf_tokenizer

    from mapo_verl.data.dataset import AudioRLHFDataset

    tokenizer, processor = hf_tokenizer(str(assets.model_dir)), hf_processor(str(assets.model_dir))
    demo_rows = pd.read_parquet(assets.train_file).to_dict("records")
    results: dict = {"rows": args.rows, "repeats": args.repeats, "cpus": os.cpu_count(),
                     "load_average_at_start": os.getloadavg(), "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for clip_format in args.formats.split(","):
            rows = _rows(demo_rows, args.rows)
            if clip_format == "path":
                clip_dir = Path(tmp) / "clips"
                clip_dir.mkdir(exist_ok=True)
                for index, row in enumerate(rows):
                    wav = clip_dir / f"{index}.wav"
                    if not wav.exists():
                        _write_wav(wav, np.asarray(row["audios"][0], dtype=np.float32))
                    rows[index] = {**row, "audios": [str(wav)]}
            path = str(Path(tmp) / f"bench_{clip_format}.parquet")
            if clip_format == "array":  # float32 sample lists, built in Arrow (Python float lists would not fit)
                _write_sample_lists(rows, path)
            else:
                pd.DataFrame(rows).to_parquet(path)
            del rows
            timings = {"off": [], "on": [], "cpu_off": [], "cpu_on": [], "check": []}
            for repeat in range(args.repeats + 1):  # the first round warms the file cache and is not counted
                for enable in (False, True):
                    report_dir = tempfile.mkdtemp(dir=tmp)
                    seconds, cpu, check = _load_seconds(AudioRLHFDataset, path, tokenizer, processor, enable,
                                                        report_dir)
                    if repeat:
                        timings["on" if enable else "off"].append(seconds)
                        timings["cpu_on" if enable else "cpu_off"].append(cpu)
                        if enable:
                            timings["check"].append(check)
            per_10k = 10000 / args.rows
            medians = {key: statistics.median(values) for key, values in timings.items()}
            results["formats"][clip_format] = {
                "load_s_checks_off": round(medians["off"], 3),
                "load_s_checks_on": round(medians["on"], 3),
                "check_s": round(medians["check"], 3),
                "check_s_per_10k_rows": round(medians["check"] * per_10k, 3),
                "added_load_s_per_10k_rows": round((medians["on"] - medians["off"]) * per_10k, 3),
                "added_cpu_s_per_10k_rows": round((medians["cpu_on"] - medians["cpu_off"]) * per_10k, 3),
                "all_check_s": [round(value, 3) for value in timings["check"]],
            }
            print(json.dumps({clip_format: results["formats"][clip_format]}), flush=True)
    results["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
