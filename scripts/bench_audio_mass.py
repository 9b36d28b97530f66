#!/usr/bin/env python
"""Audio-mass cost on CPU: indicator-V through sdpa vs the materialised softmax (docs/DESIGN.md "The attention branch").

For every sequence length S, both ways compute the head-reduced audio mass ``a`` of every
query from the same ``q, k`` (GQA, causal) and back-propagate ``Σ −log(a + ε)`` into ``q``
and ``k``:

- ``indicator_v``: :func:`mapo_verl.hf.indicator_v_mass` through transformers' own
  ``sdpa_attention_forward`` (what MAPO's hook adds to a training step);
- ``explicit_softmax``: ``softmax(q kᵀ/√d + causal)`` materialised as ``[b, h, S, S]``,
  then ``Σ_j p_tj · 1[j ∈ audio]`` (what the authors' release does).

Peak memory is the rise of the process's peak resident set (``VmHWM``, reset before each
run through ``/proc/self/clear_refs``) over the resident set at the start of the run; glibc
is told to give every allocation of 64 KiB or more its own mapping (``mallopt``), so the
resident set follows live tensor memory instead of the heap's high-water mark. Time is the
median wall time of forward + backward. Both run side by side in one process, so
the ratios per S compare like with like. Prints a table and writes JSON.

    .venv/bin/python scripts/bench_audio_mass.py --out outputs/bench_audio_mass.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mapo_verl.hf import indicator_v_mass

EPS = 1e-6


class AttentionShape(torch.nn.Module):
    """What transformers' attention functions read from the calling module."""

    def __init__(self, heads: int, kv_heads: int, attn_implementation: str = "sdpa"):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads
        self.is_causal = True
        self.layer_idx = 0
        self.config = SimpleNamespace(_attn_implementation=attn_implementation)


def _track_large_allocations() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 64 * 1024) and libc.mallopt(m_trim_threshold, 64 * 1024)):
        raise RuntimeError("mallopt failed: peak-memory figures would follow the heap, not live tensors")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{key}:\s+(\d+) kB", status.read()).group(1)) * 1024


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    return _status_bytes("VmRSS")


def indicator_v(module, q, k, v, audio, attention_fn=sdpa_attention_forward, head_reduce="max"):
    """The hook's computation: the audio mass through the attention function, indicator values."""
    return indicator_v_mass(attention_fn, module, q, k, v, None, audio, dropout=0.0, scaling=q.shape[-1] ** -0.5,
                            head_reduce=head_reduce)


def explicit_softmax(module, q, k, v, audio, head_reduce="max"):
    """The authors' way: the ``[b, h, S, S]`` softmax (float32, as eager attention) times the audio mask."""
    keys = k.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = (q @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1, dtype=torch.float32)
    mass = (probs * audio[:, None, None, :].to(probs.dtype)).sum(dim=-1)
    return mass.amax(dim=1) if head_reduce == "max" else mass.mean(dim=1)


METHODS = {"indicator_v": indicator_v, "explicit_softmax": explicit_softmax}


def make_inputs(length: int, heads: int, kv_heads: int, head_dim: int, *, device="cpu", dtype=torch.float32,
                seed: int = 0):
    """``q [1, h, S, d]``, ``k, v [1, h_kv, S, d]`` (leaves for q, k) and a quarter of audio keys."""
    generator = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, heads, length, head_dim, generator=generator, device=device).to(dtype).requires_grad_()
    k = torch.randn(1, kv_heads, length, head_dim, generator=generator, device=device).to(dtype).requires_grad_()
    v = torch.randn(1, kv_heads, length, head_dim, generator=generator, device=device).to(dtype)
    audio = torch.zeros(1, length, dtype=torch.bool, device=device)
    audio[:, length // 8: length // 8 + length // 4] = True  # a prompt with a quarter of audio tokens
    return q, k, v, audio


def mass_step(method, module, q, k, v, audio) -> torch.Tensor:
    """Forward and backward of ``Σ −log(a + ε)`` into ``q`` and ``k``; returns ``a``."""
    q.grad = k.grad = None
    mass = method(module, q, k, v, audio)
    (-torch.log(mass.float() + EPS)).sum().backward()
    return mass.detach()


def measure(length: int, heads: int, kv_heads: int, head_dim: int, repeats: int) -> dict:
    module = AttentionShape(heads, kv_heads)
    row = {"seq_len": length}
    masses = {}
    for name, method in METHODS.items():
        q, k, v, audio = make_inputs(length, heads, kv_heads, head_dim)
        baseline = _reset_peak()
        masses[name] = mass_step(method, module, q, k, v, audio)  # also the warm-up
        peak = _status_bytes("VmHWM") - baseline
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mass_step(method, module, q, k, v, audio)
            times.append(time.perf_counter() - start)
        row[name] = {"peak_mib": peak / 2**20, "time_s": statistics.median(times)}
    row["memory_ratio_explicit_over_indicator"] = row["explicit_softmax"]["peak_mib"] / max(
        row["indicator_v"]["peak_mib"], 1e-9)
    row["time_ratio_explicit_over_indicator"] = row["explicit_softmax"]["time_s"] / row["indicator_v"]["time_s"]
    row["max_abs_mass_difference"] = float((masses["indicator_v"] - masses["explicit_softmax"]).abs().max())
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_audio_mass.json"))
    args = parser.parse_args(argv)
    if args.heads % args.kv_heads:
        parser.error("--heads must be a multiple of --kv-heads")

    _track_large_allocations()
    for method in METHODS.values():  # one-time kernel / thread-pool set-up is charged to neither side
        mass_step(method, AttentionShape(args.heads, args.kv_heads), *make_inputs(256, args.heads, args.kv_heads,
                                                                                 args.head_dim))
    rows = []
    header = (f"{'S':>6} | {'indicator-V MiB':>15} {'s':>7} | {'explicit MiB':>12} {'s':>7} | "
              f"{'mem ratio':>9} {'time ratio':>10} | {'max |Δa|':>9}")
    print(f"b=1, heads={args.heads}, kv_heads={args.kv_heads}, head_dim={args.head_dim}, float32, causal, "
          f"forward+backward, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(header)
    print("-" * len(header))
    for length in args.seq_lens:
        row = measure(length, args.heads, args.kv_heads, args.head_dim, args.repeats)
        rows.append(row)
        ind, exp = row["indicator_v"], row["explicit_softmax"]
        print(f"{length:>6} | {ind['peak_mib']:>15.1f} {ind['time_s']:>7.3f} | {exp['peak_mib']:>12.1f} "
              f"{exp['time_s']:>7.3f} | {row['memory_ratio_explicit_over_indicator']:>9.1f} "
              f"{row['time_ratio_explicit_over_indicator']:>10.2f} | {row['max_abs_mass_difference']:>9.2e}",
              flush=True)
    result = {
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": {"batch": 1, "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                  "dtype": "float32", "mask": "causal"},
        "memory": "rise of peak RSS (VmHWM) over RSS at start, per method and S; allocations >= 64 KiB mmapped",
        "time": f"median of {args.repeats} forward+backward runs after one warm-up",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
