#!/usr/bin/env bash
# Prepared GPU check of the Megatron audio-mass hook. One short run on a lent GPU.
#
# What it measures, on one GPU in bf16 with a megatron-core GPTModel (TE attention when
# transformer-engine is importable, megatron-core's unfused attention otherwise):
#   - forward+backward time and peak memory of a training step with and without the hook
#     (last 3 of 8 layers, η = 1) at S in $MAPO_GPU_SEQS;
#   - the hooked a_t (bf16 kernel) against an fp32 explicit-softmax mass from the same q, k.
# Result: $OUT/gpu_check_megatron.json (and the log on stdout).
#
# Then, where Megatron-Bridge is importable (carried), scripts/gpu_check_bridge.py: Megatron-Bridge's
# Qwen2.5-Omni, Qwen3-Omni and Qwen2-Audio models (tiny, bf16, TE spec when TE is importable), one
# hooked training step at micro-batch size 1 and 2 each, a_t vs fp32 explicit softmax
# ($OUT/gpu_check_bridge.json).
#
# The device has no network and no veRL: this needs megatron-core (and for the second part
# Megatron-Bridge and what it imports), which travel as wheels (about 20 MB; the 64 MiB carry).
# Prepare once on the CPU machine (ignored folder, carried with the call):
#   .venv-megatron/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu_wheels \
#       megatron-core==0.18.2 megatron-bridge==0.5.1 transformers==5.8.1 nvidia-modelopt==0.47.0 \
#       diffusers==0.42.1
# (add transformer_engine wheels to .gpu_wheels/ if they fit), then run
#   bash scripts/gpu_check_megatron.sh            with carry [".gpu_wheels"]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
WHEELS="${MAPO_GPU_WHEELS:-.gpu_wheels}"
SITE="$(mktemp -d)"
if ! python -c "import megatron.core" 2>/dev/null; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no megatron-core importable and no wheel in $WHEELS (see the header of this script)" >&2
    exit 2
  fi
  python -m pip install --no-deps --no-index --quiet --target "$SITE" "${wheels[@]}"
fi
export PYTHONPATH="$PWD:$SITE:${PYTHONPATH:-}"
export OUT MAPO_GPU_SEQS="${MAPO_GPU_SEQS:-1024,2048,4096}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

python - <<'PY'
import json, os, time
import torch
import torch.distributed as dist

assert torch.cuda.is_available(), "this check needs a CUDA device"
torch.cuda.set_device(0)
dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
from megatron.core.transformer.transformer_config import TransformerConfig
import megatron.core

from mapo_verl.core import attention_objective_from_coefficients
from mapo_verl.megatron.attention_hook import AudioMassHook, AudioMassRequest

ps.initialize_model_parallel(1, 1)
model_parallel_cuda_manual_seed(0)
try:
    import transformer_engine  # noqa: F401
    spec, backend = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(), "transformer_engine"
except Exception as exc:  # no TE wheel carried: the unfused kernel (materialises S x S itself)
    spec, backend = gpt_layer_specs.get_gpt_layer_local_spec(), f"local ({type(exc).__name__})"
config = TransformerConfig(
    num_layers=8, hidden_size=1024, num_attention_heads=16, num_query_groups=4, ffn_hidden_size=2816,
    bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16, attention_dropout=0.0,
    hidden_dropout=0.0)
model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=32000, max_sequence_length=16384,
                 position_embedding_type="rope").cuda()
LAYERS = [-3, -2, -1]
captured = {}
for layer in model.decoder.layers[-3:]:  # capture q, k of the chosen layers for the fp32 reference
    core, original = layer.self_attention.core_attention, layer.self_attention.core_attention.forward

    def capture(query, key, value, attention_mask, *args, _o=original, _n=layer.layer_number, **kwargs):
        captured[_n] = (query.detach(), key.detach())
        return _o(query, key, value, attention_mask, *args, **kwargs)

    core.forward = capture


def make_inputs(seq):
    g = torch.Generator(device="cuda").manual_seed(seq)
    ids = torch.randint(0, 32000, (1, seq), device="cuda", generator=g)
    pos = torch.arange(seq, device="cuda")[None]
    mask = None if backend == "transformer_engine" else \
        torch.triu(torch.ones(seq, seq, dtype=torch.bool, device="cuda"), 1)[None, None]
    audio = torch.zeros(1, seq, dtype=torch.bool, device="cuda")
    audio[:, seq // 16: seq // 4] = True
    gate = torch.zeros(1, seq, dtype=torch.bool, device="cuda")
    gate[:, seq // 2:] = True
    coef = torch.rand(1, seq, device="cuda", generator=g) * gate
    return ids, pos, mask, audio, gate, coef


def step(seq, hook):
    ids, pos, mask, audio, gate, coef = make_inputs(seq)
    request = None
    model.zero_grad(set_to_none=True)
    if hook is None:
        logits = model(ids, pos, mask)
    else:
        request = AudioMassRequest(audio_keys=audio, objective=lambda a: attention_objective_from_coefficients(
            a, coef, gate, num_sequences=1))
        with hook.attach(0, request):
            logits = model(ids, pos, mask)
    logits.float().logsumexp(-1).mean().backward()
    return request


def measure(seq, hook, reps=3):
    step(seq, hook)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(reps):
        step(seq, hook)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3, (torch.cuda.max_memory_allocated() - base) / 2**20


def explicit_mass(seq, request):
    """fp32 softmax over the captured bf16 q, k: the reference the hooked bf16 kernel approximates."""
    ids, pos, mask, audio, gate, coef = make_inputs(seq)
    per_layer = []
    for number in sorted(captured):
        q, k = (t.float() for t in captured[number])  # [S, B, H, D], [S, B, G, D]
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
        scores = torch.einsum("sbhd,tbhd->bhst", q, k) / q.shape[-1] ** 0.5
        causal = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device="cuda"), 1)
        probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        per_layer.append(torch.einsum("bhst,bt->bhs", probs, audio.float()).amax(dim=1))
    reference = torch.stack(per_layer).mean(0)
    return float((request.mass.float() - reference).abs().max()), float(reference.mean())


results = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               megatron_core=megatron.core.__version__, attention_backend=backend, dtype="bf16",
               layers=LAYERS, sequences={})
seqs = [int(s) for s in os.environ["MAPO_GPU_SEQS"].split(",")]
hook = AudioMassHook([model], LAYERS, head_reduce="max", layer_reduce="mean", coef=1.0)
request = step(seqs[0], hook)  # correctness first, while the q/k capture is still under the hook
results["mass_check"] = dict(seq=seqs[0], attn_loss=float(request.loss))
results["mass_check"]["max_abs_err_vs_fp32"], results["mass_check"]["mass_mean"] = explicit_mass(seqs[0], request)
print("mass check", json.dumps(results["mass_check"]), flush=True)
for seq in seqs:
    row = {}
    try:
        hook = hook or AudioMassHook([model], LAYERS, head_reduce="max", layer_reduce="mean", coef=1.0)
        hook_ms, hook_mb = measure(seq, hook)
        hook.remove()
        hook = None
        plain_ms, plain_mb = measure(seq, None)
        row.update(step_ms_hook=hook_ms, step_ms_plain=plain_ms, time_ratio=hook_ms / plain_ms,
                   peak_mib_hook=hook_mb, peak_mib_plain=plain_mb, memory_ratio=hook_mb / plain_mb)
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"OOM: {exc}"[:300]
        hook = None
        torch.cuda.empty_cache()
    results["sequences"][str(seq)] = row
    print(seq, json.dumps(row), flush=True)
with open(os.path.join(os.environ["OUT"], "gpu_check_megatron.json"), "w") as fh:
    json.dump(results, fh, indent=1)
print(json.dumps(results, indent=1))
dist.destroy_process_group()
PY
if python -c "import megatron.bridge" >/dev/null 2>&1 || \
   python -c "import importlib.util as u; assert u.find_spec('megatron.bridge')" >/dev/null 2>&1; then
  python scripts/gpu_check_bridge.py || echo "gpu_check_bridge.py failed (see above)" >&2
else
  echo "Megatron-Bridge not importable: the bridge models were not checked (see the header)" >&2
fi
