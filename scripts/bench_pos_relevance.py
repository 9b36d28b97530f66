#!/usr/bin/env python
"""Cost of MAPO's per-step trainer math on the authors' batch: the POS gate and the relevance math.

The authors train on 256 responses of up to 1200 tokens per step. This script builds such a
batch from synthetic chain-of-thought text (English function and content words, numbers,
punctuation, paragraphs separated by newlines), tokenised by a byte-level BPE tokenizer trained
on that text (the demo's tokenizer builder, ``--vocab`` pieces), with response lengths drawn
uniformly in [``--min-length``, 1200]. It times, on ``--threads`` CPU threads:

- the POS gate (:class:`mapo_verl.pos_gate.PartOfSpeechGate`, decode + word grouping + tagging
  + fallbacks) for each tagger available here: ``lexicon``; ``nltk`` when NLTK and its tagger
  data are installed; ``nltk-stub``, NLTK's code path with a stub ``pos_tag`` that tags every
  word ``NN`` in constant time (the gate's own overhead without the perceptron). The first call
  (token decode cache cold) and the median of the following ``--repeats`` calls are reported;
- the relevance math of one step (:func:`mapo_verl.batch_relevance.relevance_for_batch`,
  :func:`attention_fields_for_batch`, :func:`relevance_metrics`), median of ``--repeats``.

The sum is compared with ``--step-seconds``, a nominal wall time of one training step of the
authors' setup (an assumption given on the command line, not measured here). Prints the
numbers and writes JSON.

    .venv/bin/python scripts/bench_pos_relevance.py --out outputs/bench_pos_relevance.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from mapo_verl.config import POS_CONTENT_TAGS, MAPOConfig
from mapo_verl.demo.model import build_tokenizer
from mapo_verl.pos_gate import PartOfSpeechGate, build_tagger
from mapo_verl.batch_relevance import attention_fields_for_batch, relevance_for_batch, relevance_metrics

FUNCTION_WORDS = ("the a an of in on at to is are was be it this that and or but so if then because not "
                  "we i you they there can will should must have has do does which when how").split()
CONTENT_WORDS = ("audio sound speaker voice music tone pitch frequency answer option question clip noise "
                 "background rhythm melody instrument female male speech emotion happy sad loud quiet "
                 "high low fast slow first second third segment beginning end likely clearly indicates "
                 "suggests hear listen describe identify compare reason conclude choose matches").split()


def sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(6, 18)):
        pool = FUNCTION_WORDS if rng.random() < 0.45 else CONTENT_WORDS
        word = rng.choice(pool) if rng.random() > 0.05 else str(rng.randint(1, 2000))
        words.append(word)
    words[0] = words[0].capitalize()
    text = " ".join(words)
    return text + rng.choice([".", ".", ",", "?", ":"])


def chain_of_thought(rng: random.Random, sentences: int) -> str:
    paragraphs, current = [], []
    for _ in range(sentences):
        current.append(sentence(rng))
        if rng.random() < 0.25:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    return "\n".join(p for p in paragraphs if p) + "\n<answer>B</answer>"


def build_batch(rows: int, max_length: int, min_length: int, vocab: int, seed: int):
    rng = random.Random(seed)
    texts = [chain_of_thought(rng, 160) for _ in range(rows)]
    tokenizer = build_tokenizer(texts[:64], vocab_size=vocab)
    responses = torch.full((rows, max_length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(rows, max_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        length = min(len(ids), rng.randint(min_length, max_length))
        responses[row, :length] = torch.tensor(ids[:length])
        mask[row, :length] = 1
    return tokenizer, responses, mask


def time_call(fn, repeats: int) -> dict[str, float]:
    """Wall and CPU seconds (this process, all threads) of the first call and medians of the next ``repeats``.

    On a shared machine the wall time grows with the load; the CPU time much less.
    """
    walls, cpus = [], []
    for _ in range(repeats + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"first_s": walls[0], "median_s": statistics.median(walls[1:]), "first_cpu_s": cpus[0],
            "median_cpu_s": statistics.median(cpus[1:])}


def _describe(timing: dict[str, float]) -> str:
    return (f"first {timing['first_s']:.3f} s wall / {timing['first_cpu_s']:.3f} s CPU, then median "
            f"{timing['median_s']:.3f} s wall / {timing['median_cpu_s']:.3f} s CPU")


def stub_nltk() -> types.ModuleType:
    stub = types.ModuleType("nltk")
    stub.pos_tag = lambda words: [(word, "NN") for word in words]
    return stub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=1200)
    parser.add_argument("--min-length", type=int, default=600)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=300.0,
                        help="nominal wall time of one training step of the authors' setup (assumed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_pos_relevance.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer, responses, mask = build_batch(args.rows, args.max_length, args.min_length, args.vocab, args.seed)
    tokens = int(mask.sum())
    print(f"batch: {args.rows} responses, {tokens} tokens (max {args.max_length}), vocab {len(tokenizer)}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    taggers = {"lexicon": None, "nltk-stub": stub_nltk()}
    try:
        build_tagger("nltk", POS_CONTENT_TAGS)
        taggers["nltk"] = None
    except RuntimeError:
        print("nltk: not installed with its tagger data here; timing lexicon and nltk-stub only")
    results = {"pos_gate": {}}
    for name, module in taggers.items():
        previous = sys.modules.get("nltk")
        if module is not None:
            sys.modules["nltk"] = module
        try:
            gate = PartOfSpeechGate(tokenizer, POS_CONTENT_TAGS, "lexicon" if name == "lexicon" else "nltk")
            timing = time_call(lambda: gate.gate_and_fallbacks(responses, mask), args.repeats)
            pos, fell_back = gate.gate_and_fallbacks(responses, mask)
        finally:
            if module is not None:
                if previous is None:
                    sys.modules.pop("nltk", None)
                else:
                    sys.modules["nltk"] = previous
        results["pos_gate"][name] = {**timing, "gated_frac": float(pos[mask.bool()].float().mean()),
                                     "fallback_rows": int(fell_back.sum())}
        print(f"pos gate [{name}]: {_describe(timing)} (gated {results['pos_gate'][name]['gated_frac']:.2f} of tokens)")

    generator = torch.Generator().manual_seed(args.seed)
    h_pol = torch.rand(responses.shape, generator=generator) * 3 * mask
    h_abl = (h_pol + torch.randn(responses.shape, generator=generator)).clamp(min=0) * mask
    has_audio = torch.ones(args.rows, dtype=torch.bool)
    advantages = torch.randn(args.rows, 1, generator=generator) * mask
    failed = torch.rand(args.rows, generator=generator) < 0.4
    config = MAPOConfig()
    pos = PartOfSpeechGate(tokenizer, POS_CONTENT_TAGS, "lexicon")(responses, mask)

    def relevance_step():
        relevance = relevance_for_batch(h_pol, h_abl, mask, has_audio, config, pos_gate=pos)
        attention_fields_for_batch(relevance, advantages, failed, config)
        relevance_metrics(relevance, config.mask_cap)

    relevance = results["relevance_math"] = time_call(relevance_step, args.repeats)
    print(f"relevance math (ω̃, ν̃, coefficients, metrics): {_describe(relevance)}")

    for name, timing in results["pos_gate"].items():
        for suffix, label in (("s", "wall"), ("cpu_s", "CPU")):
            total = timing[f"first_{suffix}"] + relevance[f"median_{suffix}"]
            timing[f"step_share_{label.lower()}"] = total / args.step_seconds
            print(f"[{name}] gate (first call) + relevance: {total:.3f} s {label} = "
                  f"{100 * total / args.step_seconds:.2f} % of a {args.step_seconds:.0f} s step")
    results.update({
        "rows": args.rows, "max_length": args.max_length, "min_length": args.min_length, "tokens": tokens,
        "vocab": len(tokenizer), "threads": args.threads, "repeats": args.repeats,
        "step_seconds_assumed": args.step_seconds, "python": platform.python_version(),
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "load_average_1_5_15": os.getloadavg(),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
