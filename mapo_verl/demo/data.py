"""A generated audio question-answering set with checkable answers, in veRL's parquet format.

Two tasks on synthetic tones (numpy only, deterministic per seed):

- ``count``: 1-4 short beeps; "How many beeps are in the audio? ..." → ``"3"``;
- ``pitch``: two tones; "Is the second tone higher than the first? ..." → ``"yes"`` / ``"no"``.

Rows follow veRL's ``RLHFDataset`` layout: ``prompt`` (chat messages with an ``<audio>``
placeholder), ``audios`` (the clips as float32 sample lists at :data:`SAMPLING_RATE`),
``reward_model.ground_truth``, ``data_source`` and ``extra_info.index``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mapo_verl.demo.model import MAX_CLIP_SECONDS, SAMPLING_RATE

__all__ = ["DATA_SOURCE", "QUESTIONS", "corpus", "make_clip", "make_rows", "question_rows", "write_parquet"]

DATA_SOURCE = "mapo_demo_tones"
QUESTIONS = {
    "count": "How many beeps are in the audio? Answer with one number.",
    "pitch": "Is the second tone higher than the first? Answer yes or no.",
}
_BEEP_SECONDS, _GAP_SECONDS = 0.12, 0.1
_PITCHES_HZ = (330.0, 440.0, 550.0, 660.0, 880.0)


def _tone(freq_hz: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps, no clicks
    return (rng.uniform(0.3, 0.8) * envelope * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLING_RATE), dtype=np.float32)


def make_clip(task: str, answer: str, rng: np.random.Generator) -> np.ndarray:
    """One clip whose correct answer to ``QUESTIONS[task]`` is ``answer``."""
    if task == "count":
        freq = float(rng.choice(_PITCHES_HZ))
        parts = [_silence(_GAP_SECONDS)]
        for _ in range(int(answer)):
            parts += [_tone(freq, _BEEP_SECONDS, rng), _silence(_GAP_SECONDS)]
    elif task == "pitch":
        low, high = sorted(rng.choice(_PITCHES_HZ, size=2, replace=False))
        first, second = (low, high) if answer == "yes" else (high, low)
        parts = [_silence(_GAP_SECONDS), _tone(first, 0.3, rng), _silence(_GAP_SECONDS), _tone(second, 0.3, rng)]
    else:
        raise ValueError(f"unknown task {task!r}; known: {sorted(QUESTIONS)}")
    clip = np.concatenate(parts)
    clip += rng.normal(0.0, 0.005, size=clip.shape).astype(np.float32)
    assert clip.size <= MAX_CLIP_SECONDS * SAMPLING_RATE
    return clip


def question_rows(num_rows: int, seed: int, split: str, *, tasks: tuple[str, str], questions: dict[str, str],
                  data_source: str, placeholder: str, media_key: str, make_media, ability: str) -> list[dict]:
    """veRL ``RLHFDataset`` rows alternating between a counting task (answer 1-4) and a yes/no task, one media
    item each (``make_media(task, answer, rng)``), reproducible from ``seed``; the audio and the vision demo
    sets are both made here."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_rows):
        task = tasks[index % 2]
        answer = str(rng.integers(1, 5)) if index % 2 == 0 else str(rng.choice(["yes", "no"]))
        rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": placeholder + questions[task]}],
                media_key: [make_media(task, answer, rng)],
                "ability": f"{ability}_{task}",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"index": index, "split": split, "task": task},
            }
        )
    return rows


def make_rows(num_rows: int, seed: int, split: str) -> list[dict]:
    """``num_rows`` audio examples alternating between the two tasks, reproducible from ``seed``."""
    return question_rows(num_rows, seed, split, tasks=("count", "pitch"), questions=QUESTIONS,
                         data_source=DATA_SOURCE, placeholder="<audio>", media_key="audios",
                         make_media=lambda task, answer, rng: make_clip(task, answer, rng).tolist(), ability="audio")


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    import pandas as pd

    path = Path(path)
    pd.DataFrame(rows).to_parquet(path)
    return path


def corpus() -> list[str]:
    """Text the demo tokenizer is trained on: the questions, answers and chat roles."""
    words = ["system", "user", "assistant", "yes", "no", "The answer is", "I hear", "beeps", "tone", "higher", "lower"]
    return [*QUESTIONS.values(), *words, " ".join(str(n) for n in range(10))] * 4
