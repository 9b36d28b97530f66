#!/usr/bin/env python
"""GPU check of the HF attention-loss path (run by scripts/gpu_check.sh on a lent GPU).

No veRL on the GPU machine: this exercises ``mapo_verl.hf`` with the machine's own
transformers and torch. Every check records its result (or its error) in one JSON file, so
one failing part never hides the others.

1. ``kernels``: the indicator-V mass through transformers' ``sdpa`` (causal → torch's flash
   kernel in bf16; padded bool mask → memory-efficient kernel; float32 and bf16) and
   ``flash_attention_2`` when flash-attn is installed (bf16), against the explicit float64
   softmax: max |Δa| and the relative error of the gradients into q and k; the materialised
   softmax in the same dtype is measured the same way as the yardstick.
2. ``models``: :class:`mapo_verl.hf.AudioMassProbe` on a tiny random Qwen2.5-Omni thinker on
   CUDA (float32): sdpa / flash masses vs. eager ``output_attentions`` masses, padded and
   packed batches (checks the hook against this machine's transformers version).
3. ``cost``: peak CUDA memory and time of forward+backward of the mass, indicator-V vs. the
   materialised softmax, at Qwen2.5-Omni-7B attention shape (28 heads, 4 KV heads, d=128,
   bf16) for S = 1k … 32k; out-of-memory is recorded as such.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_audio_mass import AttentionShape, explicit_softmax, indicator_v, make_inputs, mass_step  # noqa: E402
from mapo_verl.hf import AudioMassProbe, indicator_v_mass  # noqa: E402


def _record(results: dict, name: str, check) -> None:
    start = time.perf_counter()
    try:
        results[name] = check()
    except Exception as err:  # noqa: BLE001 - recorded, the other checks still run
        results[name] = {"error": repr(err), "traceback": traceback.format_exc(limit=8)}
    results[name + "_seconds"] = round(time.perf_counter() - start, 2)
    print(f"{name}: {json.dumps(results[name], default=str)[:2000]}", flush=True)


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.utils import is_flash_attn_2_available

    functions = {"sdpa": ALL_ATTENTION_FUNCTIONS["sdpa"]}
    if is_flash_attn_2_available():
        functions["flash_attention_2"] = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]
    return functions


def _errors_against_float64(mass_fn, q, k, v, mask, audio, heads, kv_heads, head_dim) -> dict:
    """max |Δa| and relative gradient errors of ``mass_fn(q, k)`` against the float64 softmax."""
    length = q.shape[2]
    weights = torch.rand(1, length, device=q.device, dtype=torch.float64)
    mass = mass_fn(q, k)
    dq, dk = torch.autograd.grad((mass.double() * weights).sum(), (q, k))
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    keys = k64.repeat_interleave(heads // kv_heads, dim=1)
    scores = q64 @ keys.transpose(-1, -2) * head_dim**-0.5
    allowed = torch.ones(length, length, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    want = (probs * audio[:, None, None, :].double()).sum(-1).mean(1)
    dq_ref, dk_ref = torch.autograd.grad((want * weights).sum(), (q64, k64))
    return {
        "max_abs_mass_error": float((mass.detach().double() - want).abs().max()),
        "dq_rel_error": float((dq.double() - dq_ref).norm() / dq_ref.norm()),
        "dk_rel_error": float((dk.double() - dk_ref).norm() / dk_ref.norm()),
    }


def check_kernels() -> dict:
    """Indicator-V through each kernel vs float64; the materialised softmax in the same dtype as a yardstick.

    Heads are averaged here: with ``max`` a bf16 rounding can move the arg-max to another head
    of nearly equal mass, which measures the reduction's kink, not the kernel.
    """
    heads, kv_heads, head_dim, length = 28, 4, 128, 2048
    out = {}
    for name, attention_fn in _attention_functions().items():
        module = AttentionShape(heads, kv_heads, name)
        for dtype in (torch.float32, torch.bfloat16) if name == "sdpa" else (torch.bfloat16,):
            for masked in (False, True) if name == "sdpa" else (False,):
                q, k, v, audio = make_inputs(length, heads, kv_heads, head_dim, device="cuda", dtype=dtype)
                mask = None
                if masked:  # bool causal mask, last 100 keys padding: sdpa's memory-efficient kernel
                    mask = torch.ones(length, length, dtype=torch.bool, device="cuda").tril()[None, None].clone()
                    mask[..., length - 100:] = False
                    mask[..., length - 100:, length - 100:] = torch.eye(100, dtype=torch.bool, device="cuda")
                key = f"{name}_{str(dtype).removeprefix('torch.')}_{'masked' if masked else 'causal'}"

                def indicator(q_, k_, fn=attention_fn, mask_=mask):
                    return indicator_v_mass(fn, module, q_, k_, v, mask_, audio, dropout=0.0,
                                            scaling=head_dim**-0.5, head_reduce="mean")

                out[key] = _errors_against_float64(indicator, q, k, v, mask, audio, heads, kv_heads, head_dim)
                if not masked:
                    out[f"explicit_softmax_{str(dtype).removeprefix('torch.')}"] = _errors_against_float64(
                        lambda q_, k_: explicit_softmax(module, q_, k_, v, audio, "mean"), q, k, v, None, audio, heads,
                        kv_heads, head_dim)
    return out


def _tiny_thinker(implementation: str):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=64, n_window=8, max_source_positions=64),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0], patch_size=2, window_size=4, spatial_merge_size=1,
                           temporal_patch_size=1),
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]}),
        audio_token_index=100, image_token_index=101, video_token_index=102, audio_start_token_id=103,
        audio_end_token_id=104, vision_start_token_id=105,
    )
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).cuda()
    model.set_attn_implementation(implementation)
    return model


def check_models() -> dict:
    reference = _tiny_thinker("eager")
    lengths = torch.tensor([40, 24], device="cuda")
    counts = reference.audio_tower._get_feat_extract_output_lengths(lengths)[1].tolist()
    sequences = [torch.tensor([1, 2, 103] + [100] * n + [104] + list(range(5, 5 + 9 - 4 * i)), device="cuda")
                 for i, n in enumerate(counts)]
    features = torch.randn(2, 16, 40, device="cuda")
    feature_mask = (torch.arange(40, device="cuda")[None] < lengths[:, None]).long()
    length = max(len(s) for s in sequences)
    ids = torch.zeros(2, length, dtype=torch.long, device="cuda")
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    audio = (ids == 100) & mask.bool()
    inputs = dict(input_features=features, feature_attention_mask=feature_mask, use_cache=False)
    layers = [0, -1]
    with torch.no_grad():
        attentions = reference(input_ids=ids, attention_mask=mask, output_attentions=True, **inputs).attentions
    per_layer = [(attentions[i] * audio[:, None, None, :].float()).sum(-1).amax(1) for i in (0, 2)]
    want = torch.stack(per_layer).mean(0)

    rope = [reference.get_rope_index(s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long, device="cuda"),
                                     audio_seqlens=feature_mask[i: i + 1].sum(1))[0] for i, s in enumerate(sequences)]
    text = [torch.arange(len(s), device="cuda")[None, None] for s in sequences]
    positions = torch.cat([torch.cat(text, -1), torch.cat(rope, -1)], 0)
    packed_ids = torch.cat(sequences)[None]

    out = {}
    implementations = ["sdpa"] + (["flash_attention_2"] if "flash_attention_2" in _attention_functions() else [])
    for implementation in implementations:
        model = _tiny_thinker(implementation)
        dtype = torch.bfloat16 if implementation.startswith("flash") else torch.float32
        model.to(dtype)
        probe = AudioMassProbe(model, layers)
        with probe.capture(audio) as capture:
            model(input_ids=ids, attention_mask=mask, **{**inputs, "input_features": features.to(dtype)})
            padded = capture.mass()
            padded.float().sum().backward()
        with probe.capture(packed_ids == 100) as capture:
            model(input_ids=packed_ids, position_ids=positions, **{**inputs, "input_features": features.to(dtype)})
            packed = capture.mass()
        out[implementation] = {
            "padded_vs_eager_max_abs": float((padded.float() - want)[mask.bool()].abs().max()),
            "packed_vs_padded_max_abs": float((packed[0].float() - padded.float()[mask.bool()]).abs().max()),
            "dtype": str(dtype),
        }
    return out


def _cuda_cost(method, module, q, k, v, audio, repeats: int = 5) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    try:
        mass_step(method, module, q, k, v, audio)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            mass_step(method, module, q, k, v, audio)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return {"peak_mib": peak / 2**20, "time_s": sorted(times)[len(times) // 2]}
    except torch.OutOfMemoryError:
        return {"peak_mib": None, "time_s": None, "oom": True}
    finally:
        q.grad = k.grad = None
        torch.cuda.empty_cache()


def check_cost(seq_lens: list[int]) -> list[dict]:
    heads, kv_heads, head_dim = 28, 4, 128
    functions = _attention_functions()
    rows = []
    for length in seq_lens:
        q, k, v, audio = make_inputs(length, heads, kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
        row = {"seq_len": length}
        for name, attention_fn in functions.items():
            module = AttentionShape(heads, kv_heads, name)
            method = functools.partial(indicator_v, attention_fn=attention_fn)
            row[f"indicator_v_{name}"] = _cuda_cost(method, module, q, k, v, audio)
        row["explicit_softmax"] = _cuda_cost(explicit_softmax, AttentionShape(heads, kv_heads), q, k, v, audio)
        explicit, indicator = row["explicit_softmax"], row["indicator_v_sdpa"]
        if explicit["peak_mib"] and indicator["peak_mib"]:
            row["memory_ratio_explicit_over_indicator_sdpa"] = explicit["peak_mib"] / indicator["peak_mib"]
            row["time_ratio_explicit_over_indicator_sdpa"] = explicit["time_s"] / indicator["time_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, audio
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check_attention.py needs CUDA")
    import transformers

    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "transformers": transformers.__version__,
               "attention_functions": sorted(_attention_functions())}
    _record(results, "kernels", check_kernels)
    _record(results, "models", check_models)
    _record(results, "cost", lambda: check_cost(args.seq_lens))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check_attention.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out / 'gpu_check_attention.json'}")


if __name__ == "__main__":
    main()
