"""scripts/evaluate.py: scoring given generations into per-category tables, re-scoring saved predictions,
HF generation with the tiny random Omni thinker; vLLM only where it is installed with CUDA."""

import json
from pathlib import Path

import pytest

from mapo_verl.data.mcqa import normalize_record

from tests.recipes.conftest import load_script, tone, write_wav

evaluate = load_script("evaluate")

ROWS = [  # MMAU test-mini style
    {"id": "q1", "audio_id": "./a/1.wav", "question": "Which?", "choices": ["piano", "violin"], "answer": "piano",
     "task": "music", "difficulty": "easy"},
    {"id": "q2", "audio_id": "./a/2.wav", "question": "Which?", "choices": ["rain", "wind", "fire"], "answer": "fire",
     "task": "sound", "difficulty": "hard"},
    {"id": "q3", "audio_id": "./a/3.wav", "question": "Who?", "choices": ["a man", "a woman"], "answer": "a woman",
     "task": "speech", "difficulty": "easy"},
    {"id": "q4", "audio_id": "./a/4.wav", "question": "Which?", "choices": ["drums", "flute"], "answer": "drums",
     "task": "music", "difficulty": "hard"},
]
RESPONSES = {
    "q1": "<think>keys</think><answer>A</answer>",  # right
    "q2": "<think>crackling</think><answer>fire</answer>",  # right (option text)
    "q3": "<think>low voice</think><answer>A</answer>",  # wrong
    "q4": "<think>...</think>",  # no answer: wrong
}


def items():
    return [normalize_record(row, row=i, audio_root=Path("/data")) for i, row in enumerate(ROWS)]


def test_scoring_given_generations_into_category_tables():
    results = evaluate.score(items(), RESPONSES, ("task", "difficulty"))
    assert [(r["id"], r["prediction"], r["correct"]) for r in results] == [
        ("q1", "A", True), ("q2", "C", True), ("q3", "A", False), ("q4", None, False)]
    tables = evaluate.accuracy_tables(results, ("task", "difficulty"))
    assert tables["overall"] == {"correct": 2, "total": 4, "accuracy": 50.0}
    assert tables["by"]["task"] == {
        "music": {"correct": 1, "total": 2, "accuracy": 50.0},
        "sound": {"correct": 1, "total": 1, "accuracy": 100.0},
        "speech": {"correct": 0, "total": 1, "accuracy": 0.0},
    }
    assert tables["by"]["difficulty"]["easy"] == {"correct": 1, "total": 2, "accuracy": 50.0}
    table = evaluate.markdown("mmau", tables, skipped=1)
    assert "4 evaluated, 1 skipped" in table
    assert "| sound | 1 | 1 | 100.00 |" in table and "| **overall** | 2 | 4 | 50.00 |" in table


def test_items_without_a_response_are_left_out_and_fields_missing_everywhere_make_no_table():
    results = evaluate.score(items(), {"q1": RESPONSES["q1"]}, ("task", "modality"))
    tables = evaluate.accuracy_tables(results, ("task", "modality"))
    assert tables["overall"]["total"] == 1 and set(tables["by"]) == {"task"}


@pytest.mark.parametrize("name,benchmark", [("mmau-test-mini.json", "mmau"), ("MMAR-meta.json", "mmar"),
                                            ("mmsu_test.jsonl", "mmsu"), ("avqa_val.json", "generic")])
def test_benchmark_from_file_name(name, benchmark):
    assert evaluate.detect_benchmark(Path(name)) == benchmark
    assert set(evaluate.BENCHMARK_GROUPS[benchmark]) <= {"task", "difficulty", "modality", "category", "task_name"}


@pytest.fixture
def benchmark_dir(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(1, 4):  # q4's clip is missing
        write_wav(tmp_path / "a" / f"{i}.wav", tone(300.0 * i, 0.4, 16000), 16000)
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(ROWS))
    return tmp_path


def test_rescoring_saved_predictions(benchmark_dir):
    predictions = benchmark_dir / "saved.jsonl"
    predictions.write_text("\n".join(json.dumps({"id": k, "response": v}) for k, v in RESPONSES.items() if k != "q2"))
    out = benchmark_dir / "out"
    assert evaluate.main(["--data", str(benchmark_dir / "mmau-test-mini.json"), "--predictions", str(predictions),
                          "--output-dir", str(out)]) == 0
    summary = json.loads((out / "mmau-test-mini.accuracy.json").read_text())
    assert summary["benchmark"] == "mmau" and summary["group_by"] == ["task", "difficulty"]
    # q1 right, q3 wrong, q2 has no saved prediction: wrong overall, left out of "answered"
    assert summary["overall"] == {"correct": 1, "total": 3, "accuracy": 100.0 / 3}
    assert summary["answered"] == {"correct": 1, "total": 2, "accuracy": 50.0}
    assert {(s["id"], s["kind"]) for s in summary["skipped"]} == {("q4", "missing_audio"), ("q2", "no_prediction")}
    table = (out / "mmau-test-mini.accuracy.md").read_text()
    assert "| **overall** | 1 | 3 | 33.33 |" in table and "over the 2 answered: 50.00%" in table
    lines = (out / "mmau-test-mini.predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q1", "q3"]


def test_auto_backend_is_hf_without_vllm(monkeypatch):
    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name: None)
    assert evaluate.pick_backend("auto") == "hf"
    monkeypatch.setattr(evaluate.importlib.util, "find_spec", lambda name: object())
    assert evaluate.pick_backend("auto") == "vllm" and evaluate.pick_backend("hf") == "hf"


def test_hf_generation_with_a_tiny_random_omni_thinker(benchmark_dir, tiny_omni, capsys):
    """Greedy HF generate end to end; batching (left padding) must not change any response."""
    (benchmark_dir / "a" / "3.wav").write_bytes(b"garbage")  # q3 becomes unreadable at generation time
    outputs = {}
    for batch_size in (1, 2):
        out = benchmark_dir / f"out{batch_size}"
        assert evaluate.main(["--data", str(benchmark_dir / "mmau-test-mini.json"), "--model", str(tiny_omni),
                              "--output-dir", str(out), "--backend", "hf", "--dtype", "float32", "--device", "cpu",
                              "--max-new-tokens", "6", "--batch-size", str(batch_size), "--no-progress"]) == 0
        summary = json.loads((out / "mmau-test-mini.accuracy.json").read_text())
        assert summary["backend"] == "hf" and summary["overall"]["total"] == 2
        assert {(s["id"], s["kind"]) for s in summary["skipped"]} == {("q3", "unreadable_audio"),
                                                                      ("q4", "missing_audio")}
        lines = (out / "mmau-test-mini.predictions.jsonl").read_text().splitlines()
        outputs[batch_size] = {json.loads(line)["id"]: json.loads(line)["response"] for line in lines}
    assert set(outputs[1]) == {"q1", "q2"} and outputs[1] == outputs[2]
    assert all(isinstance(text, str) for text in outputs[1].values())
    assert "## mmau-test-mini (mmau; model:" in capsys.readouterr().out


def test_vllm_generation(benchmark_dir, tiny_omni):
    pytest.importorskip("vllm")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM needs CUDA")
    out = benchmark_dir / "out_vllm"
    assert evaluate.main(["--data", str(benchmark_dir / "mmau-test-mini.json"), "--model", str(tiny_omni),
                          "--output-dir", str(out), "--backend", "vllm", "--max-new-tokens", "6",
                          "--max-model-len", "1024"]) == 0
    assert json.loads((out / "mmau-test-mini.accuracy.json").read_text())["overall"]["total"] == 3
