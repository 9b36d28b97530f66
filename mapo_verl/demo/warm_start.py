"""Supervised warm start of the grounding thinker (docs/RESULTS.md, "Protocol").

    python -m mapo_verl.demo.warm_start --out DIR [--steps 1400] [--seed 0]

Builds a random thinker (:func:`mapo_verl.demo.grounding_model.build_model`), generates a
training pool of clips with K in ``--tones`` (default 2–12) from ``--distribution`` (default
``uniform``: no text prior, so the model must listen; RL then meets the late ``cycle`` prior),
precomputes their features once, and trains on the answers by teacher forcing: AdamW, linear
warm-up then cosine decay to 10 %, gradient clipping. Training on the whole range of K
matters: trained on short clips only, the model stops after the longest length it saw and is
at chance beyond it (a length cliff, not a gradual loss of grounding). The step budget is
kept short on purpose so that late positions still make errors for RL to fix. Writes an HF
model directory (weights, tokenizer, processor) that RL starts from, and ``warm_start.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from mapo_verl.demo.grounding import DISTRIBUTIONS, make_examples
from mapo_verl.demo.grounding_model import build_model, collate, encode, load_model

__all__ = ["warm_start", "main"]


def warm_start(out: str | Path, steps: int = 1400, seed: int = 0, pool: int = 3000, tones: tuple[int, int] = (2, 12),
               distribution: str = "uniform", batch_size: int = 32, lr: float = 3e-3, warmup: int = 100, log_every: int = 100) -> dict:
    """Train and save the warm-started model to ``out``; returns the record written to ``warm_start.json``."""
    if steps < 1 or pool < batch_size:
        raise ValueError(f"need steps >= 1 and pool >= batch_size, got steps={steps}, pool={pool}, batch={batch_size}")
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(seed)
    build_model(out, seed=seed)
    model, processor = load_model(out)
    examples = make_examples(pool, tones, distribution, seed=10_000 + seed)
    encoded = encode(processor, examples)
    prepared_s = time.perf_counter() - start
    pad_id = processor.tokenizer.pad_token_id

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = min(warmup, steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    order = random.Random(seed)
    losses = []
    model.train()
    for step in range(steps):
        batch = order.sample(encoded, batch_size)
        loss = model(**collate(batch, pad_id, teacher_forcing=True)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"warm start: loss {loss.item()} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[warm_start] step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f}", flush=True)
    model.eval()
    model.save_pretrained(out)
    record = {"steps": steps, "seed": seed, "pool": pool, "tones": list(tones), "distribution": distribution, "batch_size": batch_size, "lr": lr,
              "warmup": warmup, "final_loss": sum(losses[-20:]) / len(losses[-20:]), "prepare_s": prepared_s,
              "wall_s": time.perf_counter() - start, "parameters": model.num_parameters()}
    (out / "warm_start.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=3000, help="training clips (default: %(default)s)")
    parser.add_argument("--tones", type=int, nargs=2, default=(2, 12), metavar=("MIN", "MAX"))
    parser.add_argument("--distribution", default="uniform", choices=DISTRIBUTIONS)
    args = parser.parse_args(argv)
    record = warm_start(args.out, steps=args.steps, seed=args.seed, pool=args.pool, tones=tuple(args.tones),
                        distribution=args.distribution)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
