"""Multi-process harness for MAPO's attention hook on Megatron-Bridge's audio and vision models (a script per rank).

``python bridge_harness.py --rank R --world 2 --port P --out DIR --scenarios family:case,...`` runs the
named scenarios on a two-process gloo world with Megatron-Bridge 0.5.1 / megatron-core 0.18.2 on CPU
(float64) and writes ``DIR/rank{R}.json``; ``test_bridge_models.py`` asserts on them.

Each case compares the *hooked* model under a parallel layout (indicator-V mass, gradient injected at
the chosen layers, megatron-core's pipeline schedule) with a reference built independently on the same
weights and data: TP=1, PP=1, the key mass (audio placeholders, image ones for ``qwen25_vl``; the batch
field keeps the name ``audio``) from explicitly materialised softmax probabilities, spec §2's loss written
out in ``tests/megatron/mcore_harness.py``, and one plain ``backward`` of ``Σ_mb (L_main + η·L_attn)``.
Every parameter is compared, the modality encoder's included.
"""

from __future__ import annotations

import os
import sys

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(os.path.dirname(_HERE), "megatron")]
from gloo_world import serve_rank  # noqa: E402

from mapo_verl.cpu.megatron import import_megatron_bridge, install_cuda_shims  # noqa: E402

import_megatron_bridge()
install_cuda_shims()
import bridge_models as bm  # noqa: E402

from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from mcore_harness import EPS, ETA, explicit_attention_loss  # noqa: E402

from mapo_verl.core import attention_objective_from_coefficients  # noqa: E402
from mapo_verl.megatron.attention_hook import AudioMassHook, AudioMassRequest, sum_over_pipeline  # noqa: E402
from mapo_verl.megatron.models import decoder_layers, find_language_model  # noqa: E402

torch.set_default_dtype(torch.float64)

# case -> parallel layout and hook settings. Qwen3-Omni (MoE) runs no TP case here: megatron-core refuses MoE
# with TP > 1 in training unless sequence parallelism is on, and the local (CPU) layer spec has no
# sequence-parallel norm; scripts/gpu_check_megatron.sh runs it with Transformer Engine.
CASES = {
    # TP=2, micro-batch size 1 (two micro-batches), max over heads, mean over the last two layers.
    "tp2_mbs1": dict(tp=2, pp=1, mbs=1, layers=[-2, -1]),
    # TP=2, micro-batch size 2, full activation recompute, mean over heads, max over layers.
    "tp2_mbs2_full": dict(tp=2, pp=1, mbs=2, layers=[1, 2], recompute="full", head="mean", layer="max"),
    # PP=2 (1F1B), micro-batch size 2, selective core-attention recompute, layers on the last stage.
    "pp2_mbs2_selective": dict(tp=1, pp=2, mbs=2, layers=[2, 3], recompute="selective"),
    # PP=2, micro-batch size 1, layers on the first stage (the one holding the audio encoder).
    "pp2_mbs1_first": dict(tp=1, pp=2, mbs=1, layers=[0, 1], agg="token-mean"),
}
MICRO_BATCHES = 2


# --------------------------------------------------------------------------- weights
def global_names(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameter names with each decoder layer's local index replaced by its global (0-based) index."""
    layers = decoder_layers(find_language_model(model))
    local_to_global = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(layers)}
    out = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        for i in range(len(parts) - 2):
            if parts[i:i + 2] == ["decoder", "layers"]:
                parts[i + 2] = local_to_global[parts[i + 2]]
        out[".".join(parts)] = param
    return out


def tp_slice(full: torch.Tensor, name: str, param: torch.nn.Parameter) -> torch.Tensor:
    """This rank's shard of a TP=1 tensor (gated MLPs keep [gate; up] per rank)."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if name.endswith("linear_fc1.weight"):  # gated linear unit: [gate; up], each split over TP
        return torch.cat([half.chunk(tp, dim=0)[rank] for half in full.chunk(2, dim=0)])
    return full.chunk(tp, dim=param.partition_dim)[rank]


# --------------------------------------------------------------------------- data
def make_micro_batches(family: str, mbs: int, seed: int) -> list[dict]:
    samples = bm.make_samples(family, MICRO_BATCHES * mbs, seed)
    g = torch.Generator().manual_seed(seed + 1)
    batches = []
    for start in range(0, len(samples), mbs):
        chunk = samples[start:start + mbs]
        extra = bm.labels_and_masks(chunk, bm.KEY_TOKEN[family])
        gate = extra["loss_mask"] & (torch.rand(extra["loss_mask"].shape, generator=g) < 0.8)
        coef = torch.where(gate, torch.rand(gate.shape, generator=g) + 0.5, torch.zeros(()))
        batches.append(dict(inputs=bm.model_inputs(family, chunk), labels=extra["labels"],
                            loss_mask=extra["loss_mask"].double(), audio=extra["audio"], gate=gate, coef=coef))
    return batches


def normalisers(data: list[dict]) -> dict:
    return dict(tokens=sum(float(b["loss_mask"].sum()) for b in data),
                sequences=sum(int(b["gate"].any(-1).sum()) for b in data),
                gated=sum(int(b["gate"].sum()) for b in data))


# --------------------------------------------------------------------------- reference
def run_reference(family: str, case: dict, data: list[dict]) -> dict:
    """TP=1/PP=1 model, explicit softmax masses, one plain backward of the whole objective."""
    ps.initialize_model_parallel(1, 1)
    try:
        model = bm.build_model(family)
        weights = {n: p.detach().clone() for n, p in global_names(model).items()}
        numbers = sorted(i % bm.LAYERS + 1 for i in case["layers"])
        captured, current = {}, {}
        for layer in decoder_layers(find_language_model(model)):
            if layer.layer_number not in numbers:
                continue
            core = layer.self_attention.core_attention
            original = core.forward

            def explicit(query, key, value, attention_mask, *args, _o=original, _n=layer.layer_number, _c=core,
                         **kwargs):
                k = key.repeat_interleave(query.shape[2] // key.shape[2], dim=2)
                scores = torch.einsum("sbhd,tbhd->bhst", query, k) * _c.softmax_scale
                probs = torch.softmax(scores.masked_fill(attention_mask, float("-inf")), dim=-1)
                captured[_n] = torch.einsum("bhst,bt->bhs", probs, current["audio"].double())
                return _o(query, key, value, attention_mask, *args, **kwargs)

            core.forward = explicit
        norm = normalisers(data)
        agg = case.get("agg", "seq-mean-token-mean")
        total, main_total, attn_total, masses = 0.0, 0.0, 0.0, []
        for batch in data:
            current["audio"] = batch["audio"]
            token_loss = model(**batch["inputs"], labels=batch["labels"])
            main = (token_loss * batch["loss_mask"]).sum() / norm["tokens"]
            per_layer = torch.stack([captured[n].amax(dim=1) if case.get("head", "max") == "max"
                                     else captured[n].mean(dim=1) for n in numbers])
            mass = per_layer.mean(0) if case.get("layer", "mean") == "mean" else per_layer.amax(0)
            attn = explicit_attention_loss(mass, batch, norm, agg)
            total = total + main + ETA * attn
            main_total += float(main.detach())
            attn_total += float(attn.detach())
            masses.append(mass.detach())
        total.backward()
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                 for n, p in global_names(model).items()}
        return dict(weights=weights, grads=grads, main=main_total, attn=attn_total, masses=masses)
    finally:
        ps.destroy_model_parallel()


# --------------------------------------------------------------------------- hooked run
def run_hooked(family: str, case: dict, ref: dict, data: list[dict]) -> dict:
    tp, pp = case["tp"], case["pp"]
    ps.initialize_model_parallel(tp, pp)
    try:
        model = bm.build_model(family, tp=tp, pp=pp, recompute=case.get("recompute"))
        with torch.no_grad():
            for name, param in global_names(model).items():
                param.copy_(tp_slice(ref["weights"][name], name, param))
        hook = AudioMassHook([model], case["layers"], head_reduce=case.get("head", "max"),
                             layer_reduce=case.get("layer", "mean"), coef=ETA)
        norm = normalisers(data)
        agg = case.get("agg", "seq-mean-token-mean")
        requests: list[AudioMassRequest] = []

        def forward_step(data_iterator, chunk):
            batch = next(data_iterator)

            def objective(mass, _batch=batch):
                return attention_objective_from_coefficients(
                    mass, _batch["coef"], _batch["gate"], eps=EPS, loss_agg_mode=agg,
                    num_sequences=norm["sequences"], num_tokens=norm["gated"])

            if hook.owns(0):
                request = AudioMassRequest(audio_keys=batch["audio"], objective=objective)
                requests.append(request)
                with hook.attach(0, request):
                    output = chunk(**batch["inputs"], labels=batch["labels"])
            else:
                output = chunk(**batch["inputs"], labels=batch["labels"])

            def loss_func(token_loss, _batch=batch):
                main = (token_loss * _batch["loss_mask"]).sum() / norm["tokens"]
                return main * len(data), {"main": main.detach()}  # as veRL: Megatron divides by num_microbatches

            return output, loss_func

        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(data), model=model, num_microbatches=len(data),
            seq_length=bm.SEQ, micro_batch_size=case["mbs"], forward_only=False)
        attn = sum_over_pipeline(torch.tensor([float(r.loss) for r in requests] or [0.0] * len(data)))
        main = sum_over_pipeline(torch.tensor([float(x["main"]) for x in losses] or [0.0] * len(data)))
        worst, scale, audio_worst, audio_scale, worst_name = 0.0, 0.0, 0.0, 0.0, None
        for name, param in global_names(model).items():
            expected = tp_slice(ref["grads"][name], name, param)
            got = param.grad if param.grad is not None else torch.zeros_like(param)
            error, size = float((got - expected).abs().max()), float(expected.abs().max())
            worst_name = name if error > worst else worst_name
            worst, scale = max(worst, error), max(scale, size)
            if bm.ENCODER_NAME[family] in name:
                audio_worst, audio_scale = max(audio_worst, error), max(audio_scale, size)
        mass_err = max((float((r.mass - m).abs().max()) for r, m in zip(requests, ref["masses"])), default=None)
        hook.remove()
        return dict(grad_rel=worst / max(scale, 1e-30), grad_scale=scale, audio_grad_rel=audio_worst / max(
            audio_scale, 1e-30) if audio_scale else None, audio_grad_scale=audio_scale, attn=float(attn.sum()),
            attn_ref=ref["attn"], main=float(main.sum()), main_ref=ref["main"], mass_abs=mass_err,
            requests=len(requests), model=type(model).__name__, worst_parameter=worst_name,
            attention=type(decoder_layers(find_language_model(model))[0].self_attention).__name__)
    finally:
        ps.destroy_model_parallel()


# --------------------------------------------------------------------------- audio-ablated pass
def run_ablated(family: str) -> dict:
    """Token entropies with the audio (the image) vs with the features dropped (placeholders and positions kept)."""
    from mapo_verl.modalities import AUDIO, IMAGE, ablate_modality

    ps.initialize_model_parallel(1, 1)
    try:
        model = bm.build_model(family)
        samples = bm.make_samples(family, 2, seed=31)
        inputs = bm.model_inputs(family, samples)
        kind = IMAGE if family in bm.VISION_FAMILIES else AUDIO
        modality_inputs = {k: inputs.pop(k) for k in kind.feature_keys + kind.layout_keys if k in inputs}
        ablated = ablate_modality(modality_inputs, kind, "drop")

        def entropies(extra):
            with torch.no_grad():
                logits = model(**inputs, **extra).double()
            return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)  # [B, S]

        policy, reference = entropies(modality_inputs), entropies(ablated)
        first = [int((s.ids == bm.KEY_TOKEN[family]).nonzero()[0]) for s in samples]
        before = max(float((policy[b, :f] - reference[b, :f]).abs().max()) for b, f in enumerate(first))
        after = min(float((policy[b, f:s.length] - reference[b, f:s.length]).abs().max())
                    for b, (f, s) in enumerate(zip(first, samples)))
        return dict(before_max_abs=before, after_min_of_max_abs=after, kept=sorted(ablated))
    finally:
        ps.destroy_model_parallel()


def run_scenario(name: str) -> dict:
    family, case = name.split(":")
    if case == "ablated":
        return run_ablated(family)
    data = make_micro_batches(family, CASES[case]["mbs"], seed=11)
    ref = run_reference(family, CASES[case], data)
    return run_hooked(family, CASES[case], ref, data)


if __name__ == "__main__":
    serve_rank(run_scenario)
