"""prepare_data.py and evaluate.py on bad text and long clips: the bad row is reported (with its JSONL line),
the rest is written, report.json tells the truth; evaluate skips the row and its progress bar reaches the end."""

from __future__ import annotations

import json
import wave

import numpy as np
import pandas as pd
import pytest

from tests.recipes.conftest import load_script

prepare_data = load_script("prepare_data")
evaluate = load_script("evaluate")
RATE = 16000
OPTIONS = ["a dog barking", "a car horn", "rain", "a violin"]


def write_wav(path, seconds: float):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(RATE)
        handle.writeframes((np.sin(np.arange(int(seconds * RATE)) / 7) * 9000).astype("<i2").tobytes())
    return path


def row(i, **extra) -> dict:
    return {"id": f"q{i}", "audio_path": f"clip{i}.wav", "question": f"What is heard in clip {i}?",
            "choices": OPTIONS, "answer": OPTIONS[i % 4], **extra}


@pytest.fixture
def clips(tmp_path):
    for i in range(6):
        write_wav(tmp_path / f"clip{i}.wav", 0.5)
    return tmp_path


def _line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def test_jsonl_encoding_problems_are_rows_with_line_numbers(clips, capsys):
    lines = [_line(row(0)), _line(row(1)).replace(b"What", b"Wh\xffat"), b"{not json\n", b"\n", _line(row(3)),
             _line(row(4)).replace(b"What", b"\\ud800What"), _line(row(5))]
    source = clips / "pool.jsonl"
    source.write_bytes(b"".join(lines))
    out = clips / "out"
    assert prepare_data.main(["--input", str(source), "--output-dir", str(out), "--val-ratio", "0.25",
                              "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    bad = {(entry["line"], entry["id"], entry["kind"]) for entry in report["bad_rows"]["rows"]}
    # line 2 holds a byte that is not UTF-8, line 3 is not JSON, line 6 holds a lone surrogate escape (line 4 is blank)
    assert bad == {(2, "q1", "text_encoding"), (3, "2", "invalid_json"), (6, "q4", "text_encoding")}
    written = {split: len(pd.read_parquet(out / f"{split}.parquet")) for split in ("train", "val")}
    assert written == report["rows_written"] and sum(written.values()) == 3
    assert report["rows_read"] == 6
    printed = capsys.readouterr().out
    assert "pool.jsonl line 2 id=q1 text_encoding: field 'question' holds bytes that are not UTF-8" in printed


def test_a_clip_longer_than_the_window_is_a_bad_row(clips):
    write_wav(clips / "clip2.wav", 45.0)
    source = clips / "pool.json"
    source.write_text(json.dumps([row(i) for i in range(4)]))
    out = clips / "out"
    assert prepare_data.main(["--input", str(source), "--output-dir", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    ((entry),) = report["bad_rows"]["rows"]
    assert (entry["id"], entry["kind"]) == ("q2", "clip_too_long") and "45.0s" in entry["detail"]
    assert prepare_data.main(["--input", str(source), "--output-dir", str(clips / "all"), "--no-progress",
                              "--max-clip-seconds", "0"]) == 0
    assert json.loads((clips / "all" / "report.json").read_text())["bad_rows"]["count"] == 0


def test_report_tells_the_truth_when_writing_fails(clips, monkeypatch, capsys):
    source = clips / "pool.json"
    source.write_text(json.dumps([row(i) for i in range(4)]))
    out = clips / "out"

    def failing_write(rows, path):
        if path.name == "val.parquet":
            raise OSError("disk full")
        pd.DataFrame(rows).to_parquet(path)

    monkeypatch.setattr(prepare_data, "_write", failing_write)
    assert prepare_data.main(["--input", str(source), "--output-dir", str(out), "--no-progress"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert "val.parquet failed: OSError: disk full" in report["error"]
    assert report["rows_written"] == {"train": 0, "val": 0} and report["files"] == {}
    assert not list(out.glob("*.parquet"))
    assert "disk full" in capsys.readouterr().err


def test_evaluate_skips_the_bad_row_and_keeps_the_rest(clips):
    source = clips / "mmau-test-mini.jsonl"
    source.write_bytes(_line(row(0)) + _line(row(1)).replace(b"What", b"Wh\xfeat") + _line(row(2)))
    items, skipped = evaluate.load_items(source, audio_root=None, audio_ext=".wav", answer_index_base=0)
    assert [item.id for item in items] == ["q0", "q2"]
    assert [(s["line"], s["id"], s["kind"]) for s in skipped] == [(2, "q1", "text_encoding")]


def test_evaluate_progress_counts_clips_that_cannot_be_decoded(clips):
    (clips / "clip1.wav").write_bytes(b"RIFF")
    source = clips / "pool.json"
    source.write_text(json.dumps([row(i) for i in range(5)]))
    items, _ = evaluate.load_items(source, audio_root=None, audio_ext=".wav", answer_index_base=0)

    class Progress:
        n = 0

        def update(self, count):
            self.n += count

    progress, skipped = Progress(), []
    for batch in evaluate._decoded_batches(items, 2, RATE, skipped, progress):
        progress.update(len(batch))  # as generate_hf does after each batch
    assert progress.n == len(items) == 5
    assert [(s["id"], s["kind"]) for s in skipped] == [("q1", "unreadable_audio")]
