"""scripts/prepare_data.py on generated tones: veRL's parquet layout, splits, audio forms, every bad-row kind."""

import json

import numpy as np
import pandas as pd
import pytest

from mapo_verl.data.audio import load_audio
from mapo_verl.data.mcqa import BAD_ROW_KINDS, DEFAULT_INSTRUCTION

from tests.recipes.conftest import load_script, tone, write_wav

prepare_data = load_script("prepare_data")
RATE = 16000
GOOD_AVQA, GOOD_MMAU = 8, 4


@pytest.fixture
def corpus(tmp_path):
    """An AVQA-style and an MMAU-style file with good rows and one or more rows of every bad kind."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(GOOD_AVQA + GOOD_MMAU):
        write_wav(clips / f"clip{i}.wav", tone(200.0 + 50 * i, 0.5, RATE), RATE)
    (clips / "junk.wav").write_bytes(b"RIFF but not really a wav")
    options = ["a dog barking", "a car horn", "rain", "a violin"]
    avqa = [{"id": i, "video_name": f"clip{i}", "question_text": f"What is heard in clip {i}?",
             "multi_choice": options, "answer": i % 4, "question_type": "Which"} for i in range(GOOD_AVQA)]
    bad_avqa = [  # (row dict, kind)
        ({"id": 100, "video_name": "nothere", "question_text": "q?", "multi_choice": options, "answer": 0},
         "missing_audio"),
        ({"id": 101, "question_text": "q?", "multi_choice": options, "answer": 0}, "missing_audio"),
        ({"id": 102, "video_name": "junk", "question_text": "q?", "multi_choice": options, "answer": 0},
         "unreadable_audio"),
        ({"id": 103, "video_name": "clip0", "question_text": "  ", "multi_choice": options, "answer": 0},
         "no_question"),
        ({"id": 104, "video_name": "clip0", "question_text": "q?", "multi_choice": [], "answer": 0}, "no_choices"),
        ({"id": 105, "video_name": "clip0", "question_text": "q?", "multi_choice": ["only"], "answer": 0},
         "no_choices"),
        ({"id": 106, "video_name": "clip0", "question_text": "q?", "multi_choice": ["rain", "Rain."], "answer": 0},
         "duplicate_choices"),
        ({"id": 107, "video_name": "clip0", "question_text": "q?", "multi_choice": options, "answer": 4},
         "answer_not_in_choices"),
        ({"id": 3, "video_name": "clip0", "question_text": "q?", "multi_choice": options, "answer": 1},
         "duplicate_id"),
    ]
    mmau = [{"id": f"m{i}", "audio_id": f"./clips/clip{GOOD_AVQA + i}.wav", "question": "Which instrument?",
             "choices": ["(A) piano", "(B) violin", "(C) drums"], "answer": ["piano", "violin", "drums", "piano"][i],
             "task": ["music", "sound"][i % 2], "category": "Instrument"} for i in range(GOOD_MMAU)]
    bad_mmau = [
        ({"id": "m90", "audio_id": "./clips/clip0.wav", "question": "q?", "choices": ["x", "y"], "answer": "z"},
         "answer_not_in_choices"),
        ({"id": "m0", "audio_id": "./clips/clip1.wav", "question": "q?", "choices": ["x", "y"], "answer": "x"},
         "duplicate_id"),
    ]
    avqa_rows = avqa + [row for row, _ in bad_avqa]
    mmau_rows = mmau + [row for row, _ in bad_mmau]
    (tmp_path / "avqa_train.json").write_text(json.dumps(avqa_rows))
    (tmp_path / "mmau_mini.json").write_text(json.dumps({"data": mmau_rows}))
    expected_bad = {("avqa_train.json", GOOD_AVQA + k, str(row["id"]), kind) for k, (row, kind) in enumerate(bad_avqa)}
    expected_bad |= {("mmau_mini.json", GOOD_MMAU + k, row["id"], kind) for k, (row, kind) in enumerate(bad_mmau)}
    return tmp_path, expected_bad


def run(tmp_path, *args):
    return prepare_data.main(["--output-dir", str(tmp_path / "out"), "--no-progress", *map(str, args)])


def test_pooled_inputs_are_split_and_every_row_is_accounted_for(corpus):
    root, expected_bad = corpus
    avqa_bad = {entry for entry in expected_bad if entry[0] == "avqa_train.json"}
    assert run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips", "--val-ratio", 0.25) == 0
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["rows_read"] == GOOD_AVQA + len(avqa_bad)
    assert report["rows_written"] == {"train": GOOD_AVQA - 2, "val": 2}
    assert report["rows_read"] == sum(report["rows_written"].values()) + report["bad_rows"]["count"]
    assert set(report["bad_rows"]["by_kind"]) == set(BAD_ROW_KINDS)


def test_bad_row_kinds_ids_and_summary(corpus, capsys):
    root, expected_bad = corpus
    assert run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips",
               "--val-input", root / "mmau_mini.json") == 0
    # no --val-audio-root: MMAU's "./clips/..." paths resolve against the file's directory
    report = json.loads((root / "out" / "report.json").read_text())
    got = {(entry["file"].rsplit("/", 1)[-1], entry["row"], entry["id"], entry["kind"])
           for entry in report["bad_rows"]["rows"]}
    assert got == expected_bad
    counts = {kind: sum(1 for *_, k in expected_bad if k == kind) for kind in BAD_ROW_KINDS}
    assert report["bad_rows"]["by_kind"] == counts and all(counts[kind] for kind in BAD_ROW_KINDS[:7])  # every record kind
    assert report["rows_written"] == {"train": GOOD_AVQA, "val": GOOD_MMAU}
    assert report["rows_read"] == GOOD_AVQA + GOOD_MMAU + len(expected_bad)
    out = capsys.readouterr().out
    assert f"{len(expected_bad)} bad (not written)" in out
    for kind, count in counts.items():
        assert not count or f"  {kind:<22} {count}\n" in out
    assert f"avqa_train.json:{GOOD_AVQA + 2} id=102 unreadable_audio" in out


def test_rows_follow_verls_rlhf_dataset_layout(corpus):
    root, _ = corpus
    run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips",
        "--val-input", root / "mmau_mini.json")
    train = pd.read_parquet(root / "out" / "train.parquet")
    val = pd.read_parquet(root / "out" / "val.parquet")
    assert list(train.columns) == ["data_source", "prompt", "audios", "ability", "reward_model", "extra_info"]
    row = train.iloc[3]
    (message,) = row["prompt"]
    assert message["role"] == "user" and message["content"].startswith("<audio>What is heard in clip 3?")
    assert "\n(A) a dog barking\n(B) a car horn\n(C) rain\n(D) a violin\n" in message["content"]
    assert message["content"].endswith(DEFAULT_INSTRUCTION)
    assert row["reward_model"]["ground_truth"] == "D"  # answer index 3
    assert row["extra_info"]["answer_text"] == "a violin" and list(row["extra_info"]["choices"])[3] == "a violin"
    assert row["data_source"] == "avqa_train" and row["extra_info"]["id"] == "3"
    assert row["audios"][0] == str((root / "clips" / "clip3.wav").resolve())
    assert list(train["extra_info"].map(lambda e: e["index"])) == list(range(GOOD_AVQA))
    # MMAU: lettered options lose their letters, text answers become letters
    mmau = val.iloc[1]
    assert "\n(A) piano\n(B) violin\n(C) drums\n" in mmau["prompt"][0]["content"]
    assert mmau["reward_model"]["ground_truth"] == "B" and mmau["extra_info"]["category"] == "Instrument"
    assert set(val["extra_info"].map(lambda e: e["split"])) == {"val"}


def test_split_is_seeded_disjoint_and_complete(corpus):
    root, _ = corpus

    def split(seed):
        run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips", "--val-ratio", 0.25,
            "--seed", seed)
        ids = {s: list(pd.read_parquet(root / "out" / f"{s}.parquet")["extra_info"].map(lambda e: e["id"]))
               for s in ("train", "val")}
        return ids

    first, again = split(0), split(0)
    assert first == again
    assert len(first["val"]) == round(0.25 * GOOD_AVQA) and not set(first["val"]) & set(first["train"])
    assert sorted(first["val"] + first["train"], key=int) == [str(i) for i in range(GOOD_AVQA)]
    assert any(split(seed)["val"] != first["val"] for seed in (1, 2, 3))


@pytest.mark.parametrize("audio_format", ["path", "bytes", "array"])
def test_stored_audio_decodes_to_the_source_clip(corpus, audio_format):
    root, _ = corpus
    run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips", "--val-ratio", 0,
        "--audio-format", audio_format)
    train = pd.read_parquet(root / "out" / "train.parquet")
    assert not (root / "out" / "val.parquet").exists()  # nothing held out: no empty file
    for _, row in train.iterrows():
        item = row["audios"][0]
        index = int(row["extra_info"]["id"])
        if audio_format == "bytes":
            assert set(item) == {"bytes", "path"} and item["path"] == f"clip{index}.wav"
        decoded = load_audio(dict(item) if isinstance(item, dict) else item, RATE)
        np.testing.assert_allclose(decoded, tone(200.0 + 50 * index, 0.5, RATE), atol=1 / 16000)


def test_exit_codes_and_progress_bar(corpus, capsys):
    root, _ = corpus
    args = ["--input", root / "avqa_train.json", "--audio-root", root / "clips"]
    assert run(root, *args, "--fail-on-bad-rows") == 1
    assert prepare_data.main(["--output-dir", str(root / "out2"), *map(str, args)]) == 0
    assert "prepare_data: 100%" in capsys.readouterr().err  # tqdm progress bar
    (root / "none.json").write_text(json.dumps([{"id": 1, "question": "q?", "choices": ["a"], "answer": "a"}]))
    assert prepare_data.main(["--output-dir", str(root / "out3"), "--no-progress",
                              "--input", str(root / "none.json")]) == 1
    assert not (root / "out3" / "train.parquet").exists()
    assert json.loads((root / "out3" / "report.json").read_text())["bad_rows"]["by_kind"]["no_choices"] == 1


def test_jsonl_and_mmsu_choice_columns(tmp_path):
    write_wav(tmp_path / "s.wav", tone(300.0, 0.2, RATE), RATE)
    rows = [{"id": f"s{i}", "audio_path": "s.wav", "question": "Who speaks?", "choice_a": "a man",
             "choice_b": "a woman", "choice_c": "a child", "choice_d": "nobody", "answer_gt": "a child",
             "category": "perception"}
            for i in range(3)]
    (tmp_path / "mmsu.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert prepare_data.main(["--output-dir", str(tmp_path / "o"), "--no-progress", "--input",
                              str(tmp_path / "mmsu.jsonl"), "--val-ratio", "0"]) == 0
    train = pd.read_parquet(tmp_path / "o" / "train.parquet")
    assert list(train["reward_model"].map(lambda r: r["ground_truth"])) == ["C"] * 3


def test_verl_dataset_decodes_paths_and_bytes_for_the_omni_processor(corpus, tiny_omni):
    """The written rows through veRL's RLHFDataset path (our subclass) into the real Qwen2.5-Omni processor."""
    import verl  # noqa: F401  (the plugin lets the processor load without torchvision)
    from omegaconf import OmegaConf
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset.rl_dataset import get_dataset_class
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    from mapo_verl.data.dataset import AudioRLHFDataset
    from mapo_verl.patches.processors import allow_processors_without_torchvision

    root, _ = corpus
    allow_processors_without_torchvision()
    processor, tokenizer = AutoProcessor.from_pretrained(tiny_omni), AutoTokenizer.from_pretrained(tiny_omni)
    config = OmegaConf.create({"prompt_key": "prompt", "audio_key": "audios", "max_prompt_length": 4096,
                               "filter_overlong_prompts": False, "return_raw_chat": True, "audio_sampling_rate": RATE,
                               "cache_dir": str(root / "cache"),
                               "custom_cls": {"path": "pkg://mapo_verl.data.dataset", "name": "AudioRLHFDataset"}})
    assert get_dataset_class(config) is AudioRLHFDataset  # as the recipes select it
    audio_token = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    for audio_format in ("path", "bytes"):
        run(root, "--input", root / "avqa_train.json", "--audio-root", root / "clips", "--val-ratio", 0,
            "--audio-format", audio_format)
        dataset = AudioRLHFDataset(str(root / "out" / "train.parquet"), tokenizer, config, processor=processor)
        assert len(dataset) == GOOD_AVQA
        messages = dataset[2]["raw_prompt"]
        assert [item["type"] for item in messages[0]["content"]] == ["audio", "text"]
        _, _, audios = AudioRLHFDataset._process_multi_modal_info(messages, 14, config)
        np.testing.assert_allclose(audios[0], tone(300.0, 0.5, RATE), atol=1 / 16000)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = build_multimodal_processor_inputs(processor, text=[text], audio=audios)
        frames = int(inputs["feature_attention_mask"].sum())
        # Qwen2.5-Omni: conv stride 2 then pooling 2 over the valid mel frames (independent of the processor code)
        expected_tokens = ((frames - 1) // 2 + 1 - 2) // 2 + 1
        assert int((inputs["input_ids"] == audio_token).sum()) == expected_tokens
