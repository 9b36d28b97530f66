#!/usr/bin/env python
"""Cost of MAPO's audio-ablated pass relative to veRL's old-log-prob pass, on CPU.

Both passes run on the same batch of audio QA samples through a random Qwen2.5-Omni
thinker (the demo model, widths and depths multiplied by ``--scale``), side by side in one
process, and compute what veRL's engine computes in a no-grad pass: the forward, the
response log-probs and the entropies at the rollout temperature.

- ``old_log_prob``: the full inputs (audio features through the audio encoder);
- ``ablated_<mode>``: the same batch with the audio removed by
  :func:`mapo_verl.modalities.ablate_audio` (``drop`` skips the audio encoder, ``zero`` and
  ``noise`` run it on replaced features).

The passes are timed in interleaved rounds (each round runs every pass once, in rotating
order) so drifts of the machine hit all of them alike. Prints the median wall times and the
ratios ``ablated / old_log_prob``, and writes JSON.

    .venv/bin/python scripts/bench_ablated_pass.py --out outputs/bench_ablated_pass.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

from mapo_verl.modalities import ablate_audio
from mapo_verl.core.contract import ABLATION_MODES
from mapo_verl.demo.data import corpus
from mapo_verl.demo.model import SAMPLING_RATE, build_tokenizer, omni_processor, thinker_config

TEMPERATURE = 1.0


def make_batch(processor, batch: int, seconds: float, response: int, seed: int):
    """Right-padded ``input_ids`` (prompt with one clip + a random response) and batched features."""
    rng = np.random.default_rng(seed)
    texts, clips = [], []
    for _ in range(batch):
        t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
        clips.append((0.5 * np.sin(2 * np.pi * rng.uniform(300, 900) * t)).astype(np.float32))
        content = [{"type": "audio", "audio": clips[-1]}, {"type": "text", "text": "How many beeps?"}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
    inputs = processor(text=texts, audio=clips, sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
    vocab = len(processor.tokenizer)
    responses = torch.from_numpy(rng.integers(10, vocab - 20, size=(batch, response)))
    input_ids = torch.cat([inputs["input_ids"], responses], dim=-1)
    attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(responses)], dim=-1)
    features = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    return input_ids, attention_mask, features


def no_grad_pass(model, input_ids, attention_mask, features, response: int):
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **features).logits
        logits = logits[:, -response - 1:-1] / TEMPERATURE
        log_probs = logprobs_from_logits(logits, input_ids[:, -response:])
        entropy = entropy_from_logits(logits)
    return log_probs, entropy


def interleaved_medians(passes: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each pass over ``repeats`` rounds; round r starts at pass r mod n."""
    names = list(passes)
    for name in names:  # warm-up
        passes[name]()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        for offset in range(len(names)):
            name = names[(round_index + offset) % len(names)]
            start = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="width/depth multiplier of the demo thinker")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length (the demo processor takes <= 2 s)")
    parser.add_argument("--response", type=int, default=128, help="response tokens per sample")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_ablated_pass.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = build_tokenizer(corpus())
    processor = omni_processor(tokenizer)
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(tokenizer, scale=args.scale)).eval()
    input_ids, attention_mask, features = make_batch(processor, args.batch, args.seconds, args.response, seed=0)

    generator = torch.Generator().manual_seed(0)
    inputs = {"old_log_prob": features}
    inputs.update({f"ablated_{mode}": ablate_audio(features, mode, generator=generator) for mode in ABLATION_MODES})
    passes = {name: (lambda f=f: no_grad_pass(model, input_ids, attention_mask, f, args.response))
              for name, f in inputs.items()}
    timings = interleaved_medians(passes, args.repeats)
    ratios = {key: value / timings["old_log_prob"] for key, value in timings.items() if key != "old_log_prob"}

    result = {
        "what": "no-grad forward + response log-probs + entropies, median wall seconds",
        "model": {"class": type(model).__name__, "scale": args.scale,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "batch": {"samples": args.batch, "sequence_length": int(input_ids.shape[1]), "response": args.response,
                  "clip_seconds": args.seconds},
        "seconds": timings,
        "ratio_to_old_log_prob": ratios,
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor()},
    }
    print(f"{'pass':<16}{'seconds':>10}{'ratio':>8}")
    for key, value in timings.items():
        print(f"{key:<16}{value:>10.4f}{ratios.get(key, 1.0):>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
