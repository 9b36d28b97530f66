"""Load-time row checks: every bad row of a small parquet is named (file:row, extra_info.index) with
its reason and filtered out, on veRL's stock RLHFDataset and on AudioRLHFDataset; strict fails the load;
prompt lengths are checked against the processor's own expansion of the audio placeholders."""

from __future__ import annotations

import io
import json
import math
import wave

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.faults.conftest import write_rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _dataset_classes():
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from mapo_verl.data.dataset import AudioRLHFDataset

    return {"stock": RLHFDataset, "audio": AudioRLHFDataset}


def load(rows, tmp_path, tokenizer_and_processor, kind="audio", max_prompt_length=96, **row_checks):
    tokenizer, processor = tokenizer_and_processor
    path = write_rows(rows, tmp_path / "bad.parquet")
    config = OmegaConf.create({"max_prompt_length": max_prompt_length, "audio_key": "audios",
                               "filter_overlong_prompts": False, "return_raw_chat": True,
                               "row_checks": {"report_dir": str(tmp_path), **row_checks}})
    dataset = _dataset_classes()[kind](path, tokenizer, config, processor)
    report = json.loads((tmp_path / "row_checks_bad.json").read_text())
    return dataset, report


def reasons(report) -> dict[int, str]:
    return {bad["row"]: bad["reason"] for bad in report["bad_rows"]["rows"]}


def with_question(row, text):
    return {**row, "prompt": [{"role": "user", "content": text}]}


def table_rows(good_rows):
    """Two good rows, then one row per bad input of the load-time table (positions 2..7)."""
    clip = good_rows[0]["audios"][0]
    return [
        good_rows[0],
        good_rows[1],
        with_question(good_rows[2], "<audio>How many beeps are in <|AUDIO|> the audio?"),  # stray placeholder
        {**good_rows[3], "audios": [[]]},  # zero-length clip
        {**good_rows[4], "audios": [clip, clip]},  # two clips, one marker
        {**good_rows[5], "audios": None},  # a marker and no clip
        {**good_rows[6], "audios": [clip[:100]]},  # too short for one audio token
        {**good_rows[7], "audios": [[*clip[:-1], math.nan]]},  # non-finite sample
    ]


EXPECTED = {2: "stray_placeholder", 3: "empty_clip", 4: "marker_clip_mismatch", 5: "marker_clip_mismatch",
            6: "empty_clip", 7: "unreadable_clip"}


@pytest.mark.parametrize("kind", ["stock", "audio"])
def test_every_bad_row_is_named_and_filtered(tmp_path, tokenizer_and_processor, good_rows, kind):
    rows = table_rows(good_rows)
    dataset, report = load(rows, tmp_path, tokenizer_and_processor, kind=kind)
    assert reasons(report) == EXPECTED
    for bad in report["bad_rows"]["rows"]:
        assert bad["file"].endswith("bad.parquet")
        assert bad["index"] == rows[bad["row"]]["extra_info"]["index"]
        assert bad["detail"]
    assert report["rows_checked"] == len(rows) and report["rows_kept"] == 2
    assert len(dataset) == 2
    assert [dataset[i]["index"] for i in range(2)] == [rows[0]["extra_info"]["index"], rows[1]["extra_info"]["index"]]
    assert dataset.row_check_counts == {"bad_rows": 6, "truncated_clips": 0}
    details = {bad["row"]: bad["detail"] for bad in report["bad_rows"]["rows"]}
    assert "<|AUDIO|>" in details[2]
    assert "2 clip(s)" in details[4] and "trained as plain text" in details[5]


def test_strict_fails_the_load_naming_the_rows(tmp_path, tokenizer_and_processor, good_rows):
    from mapo_verl.data.row_checks import BadRowsError

    with pytest.raises(BadRowsError) as caught:
        load(table_rows(good_rows), tmp_path, tokenizer_and_processor, strict=True)
    message = str(caught.value)
    for row, reason in EXPECTED.items():
        assert f"bad.parquet:{row} " in message and reason in message


def _real_prompt_length(processor, row) -> int:
    """The processor's own token count of the row's chat prompt with its clip (the oracle)."""
    text = row["prompt"][0]["content"].replace("<audio>", "")
    messages = [{"role": "user", "content": [{"type": "audio", "audio": None}, {"type": "text", "text": text}]}]
    templated = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    clip = np.asarray(row["audios"][0], dtype=np.float32)
    return len(processor(text=[templated], audio=[clip], sampling_rate=16000)["input_ids"][0])


def test_multimodal_prompt_length_includes_the_audio_placeholders(tmp_path, tokenizer_and_processor, good_rows):
    _, processor = tokenizer_and_processor
    row = good_rows[0]
    length = _real_prompt_length(processor, row)
    assert length > 20  # the clip's placeholders are counted, not one token per clip
    dataset, report = load([row], tmp_path, tokenizer_and_processor, max_prompt_length=length)
    assert len(dataset) == 1 and report["bad_rows"]["count"] == 0
    dataset, report = load([row], tmp_path, tokenizer_and_processor, max_prompt_length=length - 1)
    assert len(dataset) == 0
    (bad,) = report["bad_rows"]["rows"]
    assert bad["reason"] == "prompt_too_long" and f"is {length} tokens" in bad["detail"]


def test_long_clip_is_truncated_with_a_count_or_rejected(tmp_path, tokenizer_and_processor, good_rows):
    ten_seconds = [0.1] * (10 * 16000)  # the demo model's audio window is 2 s
    rows = [good_rows[0], {**good_rows[1], "audios": [ten_seconds]}]
    dataset, report = load(rows, tmp_path, tokenizer_and_processor)
    assert len(dataset) == 2
    (clip,) = report["truncated_clips"]["clips"]
    assert (clip["row"], clip["seconds"], clip["window_seconds"]) == (1, 10.0, 2.0)
    dataset, report = load(rows, tmp_path, tokenizer_and_processor, long_clips="reject")
    assert len(dataset) == 1 and reasons(report) == {1: "clip_too_long"}


def _wav_bytes(samples: int, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.sin(np.arange(samples) / 5) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


def test_clip_files_are_checked_from_their_headers(tmp_path, tokenizer_and_processor, good_rows):
    good = tmp_path / "good.wav"
    good.write_bytes(_wav_bytes(16000))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(_wav_bytes(0))
    paths = [str(good), str(junk), str(tmp_path / "missing.wav"), str(empty)]
    rows = [{**row, "audios": [clip]} for row, clip in zip(good_rows, paths)]
    dataset, report = load(rows, tmp_path, tokenizer_and_processor, kind="audio")
    assert reasons(report) == {1: "unreadable_clip", 2: "unreadable_clip", 3: "empty_clip"}
    details = {bad["row"]: bad["detail"] for bad in report["bad_rows"]["rows"]}
    assert "not a WAV file" in details[1] and "missing.wav" in details[2]
    assert len(dataset) == 1
    as_bytes = [{"bytes": b"RIFF", "path": "cut.wav"}, {"bytes": _wav_bytes(8000), "path": "fine.wav"}]
    dataset, report = load([{**row, "audios": [clip]} for row, clip in zip(good_rows, as_bytes)], tmp_path,
                           tokenizer_and_processor, kind="audio")
    assert reasons(report) == {0: "unreadable_clip"} and "truncated" in report["bad_rows"]["rows"][0]["detail"]
    assert len(dataset) == 1
    # veRL's stock dataset hands clips to the processor as they are: a path is a bad row there
    _, report = load(rows[:1], tmp_path, tokenizer_and_processor, kind="stock")
    assert reasons(report) == {0: "clip_not_samples"}


@pytest.mark.parametrize("settings, key", [({"long_clips": "cut"}, "data.row_checks.long_clips"),
                                           ({"strict": "yes"}, "data.row_checks.strict"),
                                           ({"stict": True}, "data.row_checks")])
def test_row_check_settings_name_the_key(settings, key):
    from mapo_verl.data.row_checks import RowCheckSettings

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        RowCheckSettings.from_data_config({"row_checks": settings})


def test_disabled_checks_leave_the_rows(tmp_path, tokenizer_and_processor, good_rows):
    tokenizer, processor = tokenizer_and_processor
    from mapo_verl.data.dataset import AudioRLHFDataset

    path = write_rows(table_rows(good_rows), tmp_path / "bad.parquet")
    config = OmegaConf.create({"max_prompt_length": 96, "audio_key": "audios", "filter_overlong_prompts": False,
                               "row_checks": {"enable": False, "report_dir": str(tmp_path)}})
    assert len(AudioRLHFDataset(path, tokenizer, config, processor)) == len(EXPECTED) + 2
    assert not (tmp_path / "row_checks_bad.json").exists()


@pytest.mark.parametrize("data, reason", [(b"", "the data ends early"), (b"RIFF", "truncated"),
                                          (b"ID3\x03 mp3 frames", "not a WAV file")])
def test_unreadable_wav_says_what_is_wrong(tmp_path, data, reason):
    from mapo_verl.data.audio import AudioDecodeError, load_audio

    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(str(path))
    message = str(caught.value)
    assert reason in message and str(path) in message
    assert ":  " not in message  # never an empty reason


def test_with_checks_off_a_marker_mismatch_names_the_row(tmp_path, tokenizer_and_processor, good_rows):
    """veRL's own bare ``assert audio_offset == len(audios)`` now says which row."""
    tokenizer, processor = tokenizer_and_processor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    clip = good_rows[4]["audios"][0]
    row = {**good_rows[4], "audios": [clip, clip]}
    path = write_rows([row], tmp_path / "bad.parquet")
    config = OmegaConf.create({"max_prompt_length": 96, "audio_key": "audios", "filter_overlong_prompts": False,
                               "row_checks": {"enable": False}})
    dataset = RLHFDataset(path, tokenizer, config, processor)
    with pytest.raises(ValueError, match=f"extra_info.index={row['extra_info']['index']}: audio_offset 1 != "
                                         r"len\(audios\) 2"):
        dataset[0]
