"""A learnable audio-grounding task: name K tones of a clip in order (docs/RESULTS.md).

A clip holds K tones, each from one of three pitch classes (:data:`TONE_NAMES`); the answer
is the class names in order, separated by spaces (``"low high mid ..."``). Position t of the
answer is right only if the model heard tone t, so per-position naming accuracy measures
grounding at response position t directly.

Text prior, late in the answer: in the ``cycle`` distribution the first :data:`PRIOR_FROM`
tones are drawn uniformly (they must be heard), and every later tone continues the cycle
low → mid → high → low with probability :data:`CYCLE_FOLLOW` (else it is drawn uniformly).
A model that stops listening after position :data:`PRIOR_FROM` and continues the cycle from
its own previous words is still right at ``CYCLE_FOLLOW + (1 − CYCLE_FOLLOW) / 3`` of the
late positions (:func:`prior_accuracy`): more often than a model that half-listens, so
drifting to the prior late in a long answer is rewarded (docs/RESULTS.md, "Task"). The
``uniform`` distribution (i.i.d. classes) has no prior: chance is 1/3 at every position, and
a model that follows the cycle there is wrong at 2/3 of the positions.

Everything is generated offline with numpy and is reproducible from a seed. Rows follow
veRL's ``RLHFDataset`` layout like :mod:`mapo_verl.demo.data`. :func:`compute_score` is the
veRL custom reward function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mapo_verl.demo.model import SAMPLING_RATE

__all__ = [
    "CLIP_SECONDS",
    "CYCLE_FOLLOW",
    "DATA_SOURCE",
    "PRIOR_FROM",
    "DISTRIBUTIONS",
    "QUESTION",
    "TONE_HZ",
    "TONE_NAMES",
    "Example",
    "compute_score",
    "corpus",
    "make_clip",
    "make_examples",
    "make_labels",
    "parse_names",
    "position_correct",
    "prior_accuracy",
    "rows_of",
]

DATA_SOURCE = "mapo_grounding_tones"
TONE_NAMES = ("low", "mid", "high")
TONE_HZ = (300.0, 600.0, 1200.0)
QUESTION = "Name each tone in order: low, mid or high."
CYCLE_FOLLOW = 0.9
PRIOR_FROM = 4
DISTRIBUTIONS = ("cycle", "uniform")
# Longest clip: 16 tones of at most 0.25 s, each after a gap of at most 0.10 s, plus the tail gap.
_TONE_S, _GAP_S = (0.15, 0.25), (0.05, 0.10)
MAX_TONES = 16
CLIP_SECONDS = 6
assert MAX_TONES * (_TONE_S[1] + _GAP_S[1]) + _GAP_S[1] <= CLIP_SECONDS
_WORD = re.compile(r"\S+")


def prior_accuracy(follow: float = CYCLE_FOLLOW) -> float:
    """Per-position accuracy (after position :data:`PRIOR_FROM`) of continuing the cycle without listening."""
    return follow + (1.0 - follow) / len(TONE_NAMES)


def make_labels(num_tones: int, distribution: str, rng: np.random.Generator) -> list[int]:
    """``num_tones`` class indices drawn from ``distribution`` (``cycle`` or ``uniform``)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {list(DISTRIBUTIONS)}, got {distribution!r}")
    if not 1 <= num_tones <= MAX_TONES:
        raise ValueError(f"num_tones must be in [1, {MAX_TONES}] (clips hold at most {CLIP_SECONDS} s), "
                         f"got {num_tones}")
    classes = len(TONE_NAMES)
    labels = [int(rng.integers(classes))]
    for position in range(1, num_tones):
        if distribution == "cycle" and position >= PRIOR_FROM and rng.random() < CYCLE_FOLLOW:
            labels.append((labels[-1] + 1) % classes)
        else:
            labels.append(int(rng.integers(classes)))
    return labels


def make_clip(labels: list[int], rng: np.random.Generator) -> np.ndarray:
    """16 kHz float32 clip: gap, then each tone (0.15–0.25 s, amplitude 0.3–0.8, 10 ms ramps) and a gap."""
    parts = [np.zeros(int(rng.uniform(*_GAP_S) * SAMPLING_RATE), dtype=np.float32)]
    for label in labels:
        t = np.arange(int(rng.uniform(*_TONE_S) * SAMPLING_RATE)) / SAMPLING_RATE
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
        parts.append((rng.uniform(0.3, 0.8) * envelope * np.sin(2 * np.pi * TONE_HZ[label] * t)).astype(np.float32))
        parts.append(np.zeros(int(rng.uniform(*_GAP_S) * SAMPLING_RATE), dtype=np.float32))
    clip = np.concatenate(parts)
    clip += rng.normal(0.0, 0.005, size=clip.shape).astype(np.float32)
    return clip


@dataclass(frozen=True)
class Example:
    labels: tuple[int, ...]
    clip: np.ndarray
    distribution: str

    @property
    def answer(self) -> str:
        return " ".join(TONE_NAMES[label] for label in self.labels)


def make_examples(count: int, tones: tuple[int, int] | list[int], distribution: str, seed: int) -> list[Example]:
    """``count`` examples with K drawn uniformly from the inclusive range ``tones = (lo, hi)``."""
    lo, hi = tones
    if not 1 <= lo <= hi <= MAX_TONES:
        raise ValueError(f"tones must be a range (lo, hi) with 1 <= lo <= hi <= {MAX_TONES}, got {tones!r}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        labels = make_labels(int(rng.integers(lo, hi + 1)), distribution, rng)
        out.append(Example(tuple(labels), make_clip(labels, rng), distribution))
    return out


def rows_of(examples: list[Example], split: str) -> list[dict]:
    """veRL ``RLHFDataset`` rows (see :mod:`mapo_verl.demo.data`) of ``examples``."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": "<audio>" + QUESTION}],
            "audios": [example.clip.tolist()],
            "ability": "audio_grounding",
            "reward_model": {"style": "rule", "ground_truth": example.answer},
            "extra_info": {"index": index, "split": split, "num_tones": len(example.labels),
                           "distribution": example.distribution},
        }
        for index, example in enumerate(examples)
    ]


def corpus(seed: int = 0) -> list[str]:
    """Tokenizer training text: chat roles, the question and many answers, so that ``low``,
    `` low``, `` mid`` and `` high`` become single tokens."""
    rng = np.random.default_rng(seed)
    answers = [" ".join(TONE_NAMES[i] for i in rng.integers(0, 3, size=int(rng.integers(1, MAX_TONES + 1))))
               for _ in range(200)]
    return ["system", "user", "assistant", QUESTION, *answers]


def parse_names(response: str) -> list[str]:
    """The whitespace-separated words of a response, lower-cased (tone names or anything else)."""
    return [word.lower() for word in _WORD.findall(response)]


def position_correct(predicted: list[str], truth: list[str]) -> list[bool]:
    """Per position t of ``truth``: whether the t-th predicted word is the t-th true name."""
    return [t < len(predicted) and predicted[t] == name for t, name in enumerate(truth)]


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs):
    """veRL reward function: ``score`` = correct positions / max(K, words given) (extra words
    cost like wrong ones), ``acc`` = 1 for an exactly right sequence (the task reward that
    MAPO's failure gate reads)."""
    truth = parse_names(str(ground_truth))
    if not truth:
        raise ValueError(f"{data_source}: empty ground truth {ground_truth!r}")
    predicted = parse_names(solution_str)
    correct = sum(position_correct(predicted, truth))
    return {"score": correct / max(len(truth), len(predicted)), "acc": float(predicted == truth)}
