"""GPU check of MAPO's hook on Megatron-Bridge's audio models (called by scripts/gpu_check_megatron.sh).

On one GPU in bf16 — Transformer Engine's layer spec and attention when TE is importable, megatron-core's
local spec otherwise — it builds the tiny ``Qwen25OmniModel``, ``Qwen3OmniModel`` and ``Qwen2AudioModel``
of ``tests/megatron_bridge/bridge_models.py`` and, per model and micro-batch size 1 and 2, runs one
training step with the hook attached (η = 1): the loss and every gradient must be finite, and the hooked
a_t (bf16 kernel) is compared with an fp32 explicit softmax over the same q, k. Writes
``$OUT/gpu_check_bridge.json``. Without Transformer Engine, Megatron-Bridge is imported through the
CPU backend's import-time stand-in (``mapo_verl/cpu/megatron.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "megatron_bridge"))
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
if not HAVE_TE:
    from mapo_verl.cpu.megatron import import_megatron_bridge

    import_megatron_bridge()
import megatron.bridge  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed  # noqa: E402

import bridge_models as bm  # noqa: E402
from mapo_verl.core import attention_objective_from_coefficients  # noqa: E402
from mapo_verl.megatron.attention_hook import AudioMassHook, AudioMassRequest  # noqa: E402
from mapo_verl.megatron.models import decoder_layers, find_language_model  # noqa: E402

LAYERS = [-2, -1]


def to_device(inputs: dict) -> dict:
    return {k: (v.cuda().to(torch.bfloat16) if v.is_floating_point() else v.cuda()) for k, v in inputs.items()}


def check(family: str, mbs: int) -> dict:
    model = bm.build_model(family, numerics=bm.Numerics(torch.bfloat16, transformer_engine=HAVE_TE))
    model = model.to(device="cuda", dtype=torch.bfloat16)
    captured = {}
    numbers = sorted(i % bm.LAYERS + 1 for i in LAYERS)
    for layer in decoder_layers(find_language_model(model)):
        if layer.layer_number in numbers:
            core, original = layer.self_attention.core_attention, layer.self_attention.core_attention.forward

            def capture(query, key, value, attention_mask, *args, _o=original, _n=layer.layer_number, **kwargs):
                captured.setdefault(_n, (query.detach(), key.detach()))
                return _o(query, key, value, attention_mask, *args, **kwargs)

            core.forward = capture
    hook = AudioMassHook([model], LAYERS, coef=1.0)
    samples = bm.make_samples(family, mbs, seed=3)
    inputs = to_device(bm.model_inputs(family, samples))
    extra = {k: v.cuda() for k, v in bm.labels_and_masks(samples).items()}
    gate = extra["loss_mask"]
    coef = gate.float()
    request = AudioMassRequest(audio_keys=extra["audio"], objective=lambda a: attention_objective_from_coefficients(
        a, coef, gate, num_sequences=int(gate.any(-1).sum())))
    torch.cuda.synchronize()
    start = time.perf_counter()
    with hook.attach(0, request):
        token_loss = model(**inputs, labels=extra["labels"])
    main = (token_loss.float() * gate).sum() / gate.sum()
    main.backward()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - start) * 1e3
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
    # fp32 explicit softmax over the captured bf16 q, k (causal + padding mask), heads max, layers mean
    valid = inputs["attention_mask"]
    seq = valid.shape[1]
    blocked = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device="cuda"), 1)[None, None] | ~valid[:, None, None]
    per_layer = []
    for number in numbers:
        q, k = (t.float() for t in captured[number])
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        scores = torch.einsum("sbhd,tbhd->bhst", q, k) / q.shape[-1] ** 0.5
        probs = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
        per_layer.append(torch.einsum("bhst,bt->bhs", probs, extra["audio"].float()).amax(dim=1))
    reference = torch.stack(per_layer).mean(0)
    compared = valid & gate
    error = float((request.mass.float() - reference).abs()[compared].max())
    return dict(model=type(model).__name__, attention=type(decoder_layers(find_language_model(model))[0]
                .self_attention.core_attention).__name__, loss=float(main), attn_loss=float(request.loss),
                grads_finite=grads_finite, mass_max_abs_err_vs_fp32=error, step_ms=step_ms)


def main() -> None:
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29534", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(0)
    results = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                   megatron_bridge=megatron.bridge.__version__, transformer_engine=HAVE_TE, runs={})
    for family in bm.FAMILIES:
        for mbs in (1, 2):
            try:
                row = check(family, mbs)
            except Exception:
                row = dict(error=traceback.format_exc()[-2000:])
            results["runs"][f"{family}:mbs{mbs}"] = row
            print(family, mbs, json.dumps(row), flush=True)
    with open(os.path.join(os.environ["OUT"], "gpu_check_bridge.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
