"""Held-out evaluation of a grounding model (docs/RESULTS.md, "Evaluation").

For each distribution (``cycle``: the training prior; ``uniform``: no prior) and each K of
:data:`EVAL_TONES` (inside and beyond the RL training range), on clips generated from seeds
that training never uses:

- greedy decoding: exact-sequence accuracy (the final answer), per-position naming
  accuracy (position t right iff the t-th word names tone t) and the prior-follow rate at
  positions t = 2..K (share of answers whose t-th word is the cycle successor of their own
  (t−1)-th word: 1/3 for a model that names ``uniform`` clips by ear, 1 for one that
  continues the text prior without listening);
- teacher forcing on the true answer: per-position accuracy of the argmax (no error
  propagation), audio attention mass of the query that predicts token t (share of its
  attention on the audio placeholder keys, mean over heads; per layer), and
  Δh_t = H(no audio) − H(with audio) of that prediction (audio dropped, placeholders kept);
- perturbations at K = :data:`PERTURB_TONES`: the audio replaced by silence, and by another
  clip's audio (same K). A grounded model falls to chance against the original labels
  (1/3 under ``uniform``) and follows the new clip; a model living on the text prior does not.

Clips come from seeds that training never uses, one set per ``split``: ``test`` for the
reported numbers, ``dev`` for any design choice (nothing is tuned on ``test``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mapo_verl.demo.grounding import DISTRIBUTIONS, TONE_NAMES, make_examples, parse_names, position_correct
from mapo_verl.demo.grounding_model import Encoded, collate, encode, greedy_decode

__all__ = ["EVAL_TONES", "PERTURB_TONES", "SPLIT_SEEDS", "evaluate", "prior_follow"]

EVAL_TONES = (4, 8, 12, 14, 16)
PERTURB_TONES = 12
SPLIT_SEEDS = {"test": 7_000_000, "dev": 8_000_000}  # training pools use seeds below 1_000_000
_BATCH = 50


def _mean_by_position(rows: list[list[float]], length: int) -> list[float]:
    return [float(np.mean([row[t] for row in rows])) for t in range(length)]


def _names(processor, responses: list[list[int]]) -> list[list[str]]:
    return [parse_names(processor.tokenizer.decode(ids)) for ids in responses]


def _batches(items: list, size: int = _BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _decode(model, processor, encoded: list[Encoded], max_tones: int) -> list[list[str]]:
    out = []
    for batch in _batches(encoded):
        out += _names(processor, greedy_decode(model, processor, batch, max_new_tokens=max_tones + 4))
    return out


def prior_follow(predicted: list[str], k: int) -> list[float]:
    """Per position t = 2..k: 1.0 if the t-th word is the cycle successor of the (t−1)-th (both tone
    names), else 0.0 (also where the answer is too short or a word is not a tone name)."""
    index = {name: i for i, name in enumerate(TONE_NAMES)}
    out = []
    for t in range(1, k):
        pair = predicted[t - 1:t + 1]
        follows = len(pair) == 2 and all(w in index for w in pair) and \
            index[pair[1]] == (index[pair[0]] + 1) % len(TONE_NAMES)
        out.append(float(follows))
    return out


def _greedy_scores(predicted: list[list[str]], truths: list[list[str]]) -> dict:
    k = len(truths[0])
    correct = [[float(c) for c in position_correct(p, t)] for p, t in zip(predicted, truths)]
    return {"n": len(truths), "exact": float(np.mean([p == t for p, t in zip(predicted, truths)])),
            "position_acc": _mean_by_position(correct, k), "mean_words": float(np.mean([len(p) for p in predicted])),
            "prior_follow": _mean_by_position([prior_follow(p, k) for p in predicted], k - 1)}


@torch.no_grad()
def _teacher_forced(model, processor, encoded: list[Encoded]) -> dict:
    """Per answer position t (1..K, end-of-turn excluded): argmax accuracy, audio mass per layer, Δh."""
    pad_id = processor.tokenizer.pad_token_id
    audio_id = model.config.audio_token_index
    k = len(encoded[0].labels)
    acc, mass, delta = [], [], []
    for batch in _batches(encoded):
        inputs = collate(batch, pad_id, teacher_forcing=True)
        labels = inputs.pop("labels")
        with_audio = model(**inputs, output_attentions=True)
        inputs_abl = collate(batch, pad_id, teacher_forcing=True, audio=False)
        inputs_abl.pop("labels")
        ablated = model(**inputs_abl)
        audio_keys = (inputs["input_ids"] == audio_id).float()  # [B, S]
        # attention rows are queries; mass on audio keys, mean over heads: [layers, B, S]
        layer_mass = torch.stack([(a * audio_keys[:, None, None, :]).sum(-1).mean(1) for a in with_audio.attentions])
        for i, e in enumerate(batch):
            queries = torch.arange(len(e.prompt_ids) - 1, len(e.prompt_ids) - 1 + k)  # predict answer tokens 1..K
            targets = labels[i, queries + 1]
            log_pol = torch.log_softmax(with_audio.logits[i, queries].float(), -1)
            log_abl = torch.log_softmax(ablated.logits[i, queries].float(), -1)
            entropy = lambda lp: -(lp.exp() * lp).sum(-1)  # noqa: E731
            acc.append((log_pol.argmax(-1) == targets).float().tolist())
            delta.append((entropy(log_abl) - entropy(log_pol)).tolist())
            mass.append(layer_mass[:, i, queries].T.tolist())  # [K, layers]
    layers = len(mass[0][0])
    per_layer = [[float(np.mean([row[t][layer] for row in mass])) for t in range(k)] for layer in range(layers)]
    return {"position_acc": _mean_by_position(acc, k), "delta_h": _mean_by_position(delta, k),
            "audio_mass_by_layer": per_layer,
            "audio_mass_layer_mean": [float(np.mean([curve[t] for curve in per_layer])) for t in range(k)]}


def evaluate(model, processor, clips_per_k: int = 100, tones: tuple[int, ...] = EVAL_TONES, seed: int = 0,
             split: str = "test") -> dict:
    """The evaluation record (see the module docstring) of ``model`` on held-out clips of ``split``."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {list(SPLIT_SEEDS)}, got {split!r}")
    start = time.perf_counter()
    model.eval()
    record: dict = {"clips_per_k": clips_per_k, "tones": list(tones), "split": split, "greedy": {}, "teacher_forced": {},
                    "perturbation": {}, "chance": 1 / len(TONE_NAMES)}
    for d_index, distribution in enumerate(DISTRIBUTIONS):
        record["greedy"][distribution], record["teacher_forced"][distribution] = {}, {}
        for k in tones:
            clip_seed = SPLIT_SEEDS[split] + 1000 * seed + 100 * d_index + k
            examples = make_examples(clips_per_k, (k, k), distribution, seed=clip_seed)
            encoded = encode(processor, examples)
            truths = [[TONE_NAMES[label] for label in e.labels] for e in examples]
            record["greedy"][distribution][str(k)] = _greedy_scores(_decode(model, processor, encoded, k), truths)
            record["teacher_forced"][distribution][str(k)] = _teacher_forced(model, processor, encoded)
            if k == PERTURB_TONES:
                rng = np.random.default_rng(seed)
                silence = [rng.normal(0.0, 0.005, size=e.clip.shape).astype(np.float32) for e in examples]
                swapped = [examples[(i + 1) % len(examples)] for i in range(len(examples))]
                predicted_silence = _decode(model, processor, encode(processor, examples, clips=silence), k)
                swapped_clips = [e.clip for e in swapped]
                predicted_swap = _decode(model, processor, encode(processor, examples, clips=swapped_clips), k)
                record["perturbation"][distribution] = {
                    "silence_vs_original": _greedy_scores(predicted_silence, truths),
                    "swap_vs_original": _greedy_scores(predicted_swap, truths),
                    "swap_vs_swapped_clip": _greedy_scores(
                        predicted_swap, [[TONE_NAMES[label] for label in e.labels] for e in swapped]),
                }
    record["wall_s"] = time.perf_counter() - start
    return record
