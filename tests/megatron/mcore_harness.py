"""Multi-process harness for the Megatron attention-hook tests (run as a script per rank).

``python mcore_harness.py --rank R --world W --port P --out DIR --scenarios a,b`` runs the
named scenarios on a gloo world with real megatron-core 0.16.1 on CPU (float64) and
writes ``DIR/rank{R}.json``: per scenario, the measured relative errors and values, or the
error raised. The pytest side (``test_attention_hook.py``) asserts on them.

Every scenario compares a parallel run of the *hooked* model (indicator-V mass, gradient
injected at the layers, megatron-core's pipeline schedules) against a reference built
independently on the same weights and data: TP=1, PP=1, the audio mass from explicitly
materialised softmax probabilities, the head/layer reductions and the method's loss written
out here, and one ordinary ``backward`` of ``Σ_mb (L_main + η·L_attn)``.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gloo_world import serve_rank  # noqa: E402

from mapo_verl.cpu.megatron import install_cuda_shims, padding_to_causal_mask  # noqa: E402

install_cuda_shims()

import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from mapo_verl.core import attention_objective_from_coefficients  # noqa: E402
from mapo_verl.megatron.attention_hook import AudioMassHook, AudioMassRequest, sum_over_pipeline  # noqa: E402

torch.set_default_dtype(torch.float64)

VOCAB, SEQ, MICRO_BATCH, ETA, EPS = 64, 12, 2, 0.7, 1e-6

# name -> (parallel layout, model shape, hook settings)
SCENARIOS = {
    # TP=1: hooked vs explicit, full recompute, token-mean aggregation.
    "tp1_recompute": dict(tp=1, pp=1, layers=[-2, -1], groups=2, recompute="full", agg="token-mean"),
    # TP=2 with one KV group (fewer KV groups than TP ranks), max over heads.
    "tp2_gqa1": dict(tp=2, pp=1, layers=[-2, -1], groups=1),
    # TP=2, GQA 2 groups, full activation recompute (1 layer per checkpoint), mean over heads, max over layers.
    "tp2_recompute": dict(tp=2, pp=1, layers=[1, 2], groups=2, recompute="full", head="mean", layer="max"),
    # PP=2 1F1B, 3 micro-batches, hooked layers on the FIRST stage; stage 1 has none.
    "pp2_first_stage": dict(tp=1, pp=2, layers=[0, 1], groups=2, micro_batches=3),
    # PP=2 1F1B, last layer, selective recompute of core attention.
    "pp2_selective": dict(tp=1, pp=2, layers=[-1], groups=4, micro_batches=2, recompute="selective"),
    # PP=2 x VPP=2 (interleaved 1F1B), 8 layers, hooked layers in chunk (stage 0, VPP chunk 1).
    "vpp2": dict(tp=1, pp=2, vpp=2, num_layers=8, layers=[4, 5], groups=2, micro_batches=4),
    # veRL's Megatron engine + MAPOMegatronEngine, PP=2, hooked layers on stage 0 (metrics travel to stage 1).
    "engine_pp2": dict(tp=1, pp=2, layers=[0, 1], groups=2),
    # The same engine at DP=2 under megatron-core's DDP wrapper, each rank with its own rows: the dp_size
    # factor and the DP-summed G and N must give η·∇L_attn of the union of both ranks' rows.
    "engine_dp2_ddp": dict(tp=1, pp=1, layers=[0, 1], groups=2, ddp=True),
    # Chosen layers on two stages: refused at install on every rank.
    "span_error": dict(tp=1, pp=2, layers=[1, 2], groups=2, expect_error=True),
}


# --------------------------------------------------------------------------- setup
def make_config(spec: dict, *, tp: int, pp: int, vpp: int | None, recompute: str | None) -> TransformerConfig:
    extra = {}
    if recompute == "full":
        extra = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        extra = dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    return TransformerConfig(
        num_layers=spec.get("num_layers", 4), hidden_size=32, num_attention_heads=4,
        num_query_groups=spec["groups"], ffn_hidden_size=48,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, pipeline_dtype=torch.float64, params_dtype=torch.float64,
        use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0,
        masked_softmax_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        # As veRL's Megatron engine: unbatched p2p, which keeps send/recv pairs apart at PP=2 (gloo
        # matches batched ops by order, and at PP=2 the previous and next stage are the same rank).
        batch_p2p_comm=False, **extra,
    )


def build_chunks(config: TransformerConfig, vpp: int | None) -> list[GPTModel]:
    chunks = []
    for vp in range(vpp or 1):
        vp_stage = vp if vpp else None
        chunks.append(GPTModel(
            config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
            max_sequence_length=SEQ, position_embedding_type="rope",
            share_embeddings_and_output_weights=False,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
        ))
    return chunks


def global_names(chunk: GPTModel) -> dict[str, torch.nn.Parameter]:
    """Parameter names with the layer index replaced by the global (0-based) layer index."""
    out = {}
    local_to_global = {i: layer.layer_number - 1 for i, layer in enumerate(chunk.decoder.layers)}
    for name, param in chunk.named_parameters():
        parts = name.split(".")
        if parts[:2] == ["decoder", "layers"]:
            parts[2] = str(local_to_global[int(parts[2])])
        out[".".join(parts)] = param
    return out


def tp_slice(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp = ps.get_tensor_model_parallel_world_size()
    return full.chunk(tp, dim=param.partition_dim)[ps.get_tensor_model_parallel_rank()]


def make_data(num_micro: int, seed: int) -> list[dict]:
    """Micro-batches with padding, audio keys in the prompt, gated response tokens."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_micro):
        lengths = torch.randint(SEQ - 4, SEQ + 1, (MICRO_BATCH,), generator=g)
        valid = torch.arange(SEQ)[None, :] < lengths[:, None]
        ids = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ), generator=g) * valid
        labels = torch.roll(ids, -1, dims=1)
        prompt = 5
        position = torch.arange(SEQ)[None, :]
        response = valid & (position >= prompt - 1) & (position < lengths[:, None] - 1)
        audio = (torch.rand(MICRO_BATCH, SEQ, generator=g) < 0.5) & (torch.arange(SEQ)[None, :] < prompt)
        audio[:, 1] = True
        gate = response & (torch.rand(MICRO_BATCH, SEQ, generator=g) < 0.8)
        coef = torch.where(gate, torch.rand(MICRO_BATCH, SEQ, generator=g) + 0.5, torch.zeros(()))
        causal = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1)
        mask = causal[None, None] | ~valid[:, None, None, :]
        batches.append(dict(ids=ids, labels=labels, loss_mask=response.double(), audio=audio, gate=gate,
                            coef=coef.float(), mask=mask, pos=torch.arange(SEQ).expand(MICRO_BATCH, SEQ)))
    return batches


def normalisers(data: list[dict]) -> dict:
    return dict(tokens=sum(float(b["loss_mask"].sum()) for b in data),
                sequences=sum(int(b["gate"].any(-1).sum()) for b in data),
                gated=sum(int(b["gate"].sum()) for b in data))


# --------------------------------------------------------------------------- reference
def explicit_attention_loss(mass: torch.Tensor, batch: dict, norm: dict, agg: str) -> torch.Tensor:
    """The method's L_attn written out: c_t · −log(a_t + ε), per-row token mean then /G, or /N_gated."""
    terms = batch["coef"].double() * -torch.log(torch.where(batch["gate"], mass, torch.ones_like(mass)) + EPS)
    terms = torch.where(batch["gate"], terms, torch.zeros_like(terms))
    if agg == "token-mean":
        return terms.sum() / norm["gated"]
    per_row = terms.sum(-1) / batch["gate"].sum(-1).clamp(min=1)
    return per_row.sum() / norm["sequences"]


def run_reference(spec: dict, weights_seed: int, data: list[dict]) -> dict:
    """TP=1/PP=1 model, explicit softmax masses, one plain backward of the whole objective."""
    ps.initialize_model_parallel(1, 1)
    torch.manual_seed(weights_seed)
    config = make_config(spec, tp=1, pp=1, vpp=None, recompute=None)
    model = build_chunks(config, None)[0]
    weights = {n: p.detach().clone() for n, p in global_names(model).items()}
    layer_numbers = sorted(i % config.num_layers + 1 for i in spec["layers"])
    head_how, layer_how = spec.get("head", "max"), spec.get("layer", "mean")
    agg = spec.get("agg", "seq-mean-token-mean")
    captured: dict[int, torch.Tensor] = {}
    current: dict = {}
    for layer in model.decoder.layers:
        if layer.layer_number not in layer_numbers:
            continue
        core = layer.self_attention.core_attention
        original = core.forward

        def explicit(query, key, value, attention_mask, *args, _orig=original, _n=layer.layer_number, _core=core,
                     **kwargs):
            heads, groups = query.shape[2], key.shape[2]
            k = key.repeat_interleave(heads // groups, dim=2)
            scores = torch.einsum("sbhd,tbhd->bhst", query, k) * _core.softmax_scale
            probs = torch.softmax(scores.masked_fill(attention_mask, float("-inf")), dim=-1)
            captured[_n] = torch.einsum("bhst,bt->bhs", probs, current["audio"].double())  # [B, H, S]
            return _orig(query, key, value, attention_mask, *args, **kwargs)

        core.forward = explicit
    norm = normalisers(data)
    total, main_total, attn_total, masses = 0.0, 0.0, 0.0, []
    for batch in data:
        current["audio"] = batch["audio"]
        token_loss = model(batch["ids"], batch["pos"], batch["mask"], labels=batch["labels"])
        main = (token_loss * batch["loss_mask"]).sum() / norm["tokens"]
        per_layer = [captured[n].amax(dim=1) if head_how == "max" else captured[n].mean(dim=1) for n in layer_numbers]
        stacked = torch.stack(per_layer)
        mass = stacked.mean(0) if layer_how == "mean" else stacked.amax(0)
        attn = explicit_attention_loss(mass, batch, norm, agg)
        total = total + main + ETA * attn
        main_total += float(main.detach())
        attn_total += float(attn.detach())
        masses.append(mass.detach())
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in global_names(model).items()}
    ps.destroy_model_parallel()
    return dict(weights=weights, grads=grads, main=main_total, attn=attn_total, masses=masses)


# --------------------------------------------------------------------------- hooked run
def run_hooked(spec: dict, ref: dict, data: list[dict]) -> dict:
    tp, pp, vpp = spec["tp"], spec["pp"], spec.get("vpp")
    ps.initialize_model_parallel(tp, pp, virtual_pipeline_model_parallel_size=vpp)
    try:
        config = make_config(spec, tp=tp, pp=pp, vpp=vpp, recompute=spec.get("recompute"))
        chunks = build_chunks(config, vpp)
        for chunk in chunks:
            with torch.no_grad():
                for name, param in global_names(chunk).items():
                    param.copy_(tp_slice(ref["weights"][name], param))
        agg = spec.get("agg", "seq-mean-token-mean")
        hook = AudioMassHook(chunks, spec["layers"], head_reduce=spec.get("head", "max"),
                             layer_reduce=spec.get("layer", "mean"), coef=ETA)
        norm = normalisers(data)
        requests: list[AudioMassRequest] = []
        iterators = [iter(data) for _ in chunks]

        def forward_step(data_iterator, model):
            chunk_index = chunks.index(model)
            batch = next(data_iterator)

            def objective(mass, _batch=batch):
                return attention_objective_from_coefficients(
                    mass, _batch["coef"], _batch["gate"], eps=EPS, loss_agg_mode=agg,
                    num_sequences=norm["sequences"], num_tokens=norm["gated"])

            context = nullcontext()
            if hook.owns(chunk_index):
                request = AudioMassRequest(audio_keys=batch["audio"], objective=objective, grad_multiplier=1.0)
                requests.append(request)
                context = hook.attach(chunk_index, request)
            with context:
                output = model(batch["ids"], batch["pos"], batch["mask"], labels=batch["labels"])

            def loss_func(token_loss, _batch=batch):
                main = (token_loss * _batch["loss_mask"]).sum() / norm["tokens"]
                return main * len(data), {"main": main.detach()}  # as veRL: Megatron divides by num_microbatches

            return output, loss_func

        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iterators if vpp else iterators[0],
            model=chunks if vpp else chunks[0], num_microbatches=len(data), seq_length=SEQ,
            micro_batch_size=MICRO_BATCH, forward_only=False)
        attn = sum_over_pipeline(torch.tensor([float(r.loss) for r in requests] or [0.0] * len(data)))
        main = sum_over_pipeline(torch.tensor([float(x["main"]) for x in losses] or [0.0] * len(data)))
        worst_grad, scale = 0.0, 0.0
        for chunk in chunks:
            for name, param in global_names(chunk).items():
                expected = tp_slice(ref["grads"][name], param)
                got = param.grad if param.grad is not None else torch.zeros_like(param)
                worst_grad = max(worst_grad, float((got - expected).abs().max()))
                scale = max(scale, float(expected.abs().max()))
        mass_err = max((float((r.mass - m).abs().max()) for r, m in zip(requests, ref["masses"])), default=None)
        measured = sorted({n - 1 for r in requests for n in r.masses})
        wrapped = sum("forward" in m.__dict__ for chunk in chunks for m in chunk.modules())
        hook.remove()
        unwrapped = sum("forward" in m.__dict__ for chunk in chunks for m in chunk.modules())
        return dict(
            grad_rel=worst_grad / max(scale, 1e-30), grad_scale=scale,
            attn=float(attn.sum()), attn_ref=ref["attn"], main=float(main.sum()), main_ref=ref["main"],
            mass_abs=mass_err, measured_layers=measured, wrapped_modules=wrapped, left_after_remove=unwrapped,
            requests=len(requests),
            pp_rank=ps.get_pipeline_model_parallel_rank(), tp_rank=ps.get_tensor_model_parallel_rank())
    finally:
        ps.destroy_model_parallel()


def run_cp_refusal() -> dict:
    """CP=2 meets the unfused attention: megatron-core refuses to build it, the hook refuses to hook it."""
    spec = dict(groups=2, layers=[-1])
    ps.initialize_model_parallel(1, 1, context_parallel_size=2)
    try:
        out = {}
        try:
            config = make_config(spec, tp=1, pp=1, vpp=None, recompute=None)
            config.context_parallel_size = 2
            build_chunks(config, None)
            out["megatron"] = None
        except AssertionError as exc:
            out["megatron"] = str(exc)
        chunks = build_chunks(make_config(spec, tp=1, pp=1, vpp=None, recompute=None), None)  # config says CP=1
        try:
            AudioMassHook(chunks, spec["layers"])
            out["hook"] = None
        except NotImplementedError as exc:
            out["hook"] = str(exc)
        return out
    finally:
        ps.destroy_model_parallel()


# --------------------------------------------------------------------------- veRL engine
AUDIO_ID = VOCAB - 1


def make_verl_batch(num_samples: int, seed: int):
    """A veRL no-padding actor batch (nested rows) with audio placeholders in the prompts."""
    from verl.utils import tensordict_utils as tu

    g = torch.Generator().manual_seed(seed)
    rows = {k: [] for k in ("input_ids", "prompts", "responses", "loss_mask", "response_mask", "old_log_probs",
                            "advantages", "mapo_attn_coef", "mapo_attn_gate")}
    for index in range(num_samples):
        p, r = int(torch.randint(4, 7, (1,), generator=g)), int(torch.randint(3, 6, (1,), generator=g))
        prompt = torch.randint(1, AUDIO_ID, (p,), generator=g)
        if index != 2:  # row 2 is text-only: left out of the attention branch
            prompt[1:p - 1][torch.rand(p - 2, generator=g) < 0.5] = AUDIO_ID
            prompt[1] = AUDIO_ID
        response = torch.randint(1, AUDIO_ID, (r,), generator=g)
        gate = (torch.rand(r, generator=g) < 0.8).long()
        rows["input_ids"].append(torch.cat([prompt, response]))
        rows["prompts"].append(prompt)
        rows["responses"].append(response)
        rows["loss_mask"].append(torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(r, dtype=torch.long)]))
        rows["response_mask"].append(torch.ones(r, dtype=torch.long))
        rows["old_log_probs"].append(-torch.rand(r, generator=g) - 3.0)
        rows["advantages"].append(torch.randn(r, generator=g))
        rows["mapo_attn_coef"].append((torch.rand(r, generator=g) + 0.5) * gate)
        rows["mapo_attn_gate"].append(gate)
    tensors = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in rows.items()}
    tensors["temperature"] = torch.ones(num_samples)
    return tu.get_tensordict(tensor_dict=tensors, non_tensor_dict=dict(
        use_dynamic_bsz=False, micro_batch_size_per_gpu=2, global_batch_size=num_samples, use_fused_kernels=False,
        calculate_entropy=False)), rows


def engine_reference(spec: dict, weights: dict, rows: dict, layers: list[int]) -> dict:
    """Explicit TP=1 reference of the engine's attention loss: softmax masses read at the query
    position that predicts response token t (prompt_len + t - 1), the method's seq-mean-token-mean
    over the rows that hold audio (G counts them; text-only rows are out of the branch)."""
    ps.initialize_model_parallel(1, 1)
    try:
        model = build_chunks(make_config(spec, tp=1, pp=1, vpp=None, recompute=None), None)[0]
        with torch.no_grad():
            for name, param in global_names(model).items():
                param.copy_(weights[name])
        numbers = sorted(i % model.config.num_layers + 1 for i in layers)
        captured = {}
        for layer in model.decoder.layers:
            if layer.layer_number in numbers:
                core, original = layer.self_attention.core_attention, layer.self_attention.core_attention.forward

                def explicit(query, key, value, attention_mask, *args, _o=original, _n=layer.layer_number, _c=core,
                             **kwargs):
                    k = key.repeat_interleave(query.shape[2] // key.shape[2], dim=2)
                    scores = torch.einsum("sbhd,tbhd->bhst", query, k) * _c.softmax_scale
                    probs = torch.softmax(scores.masked_fill(attention_mask, float("-inf")), dim=-1)
                    captured[_n] = torch.einsum("bhst,bt->bhs", probs, captured["audio"])
                    return _o(query, key, value, attention_mask, *args, **kwargs)

                core.forward = explicit
        total, masses, counts = 0.0, 0.0, 0
        num_sequences = sum(int((ids == AUDIO_ID).any()) for ids in rows["input_ids"])
        for ids, prompt, coef, gate in zip(rows["input_ids"], rows["prompts"], rows["mapo_attn_coef"],
                                           rows["mapo_attn_gate"]):
            seq = ids.shape[0]
            if not (ids == AUDIO_ID).any():
                continue
            captured["audio"] = (ids == AUDIO_ID).double()[None]
            mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)[None, None]
            model(ids[None], torch.arange(seq)[None], mask)
            per_layer = torch.stack([captured[n].amax(dim=1)[0] for n in numbers])  # heads: max
            mass = per_layer.mean(0)[prompt.shape[0] - 1: seq - 1]  # layers: mean; predicting positions
            gated = gate.bool()
            terms = coef.double() * -torch.log(mass + EPS)
            total = total + terms[gated].sum() / gated.sum().clamp(min=1) / num_sequences
            masses += float(mass.detach().sum())
            counts += mass.numel()
        total.backward()
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                 for n, p in global_names(model).items()}  # layers after the chosen ones get no gradient
        return dict(attn=float(total.detach()), grads=grads, audio_mass=masses / counts)
    finally:
        ps.destroy_model_parallel()


def check_audio_inputs(engine, gpt_chunk, rows) -> dict:
    """The engine hands the batch's audio features to a model that takes them, and names one that does not."""
    from verl.utils import tensordict_utils as tu

    features = [torch.randn(1, 3, 5 + i) for i in range(2)]
    batch = tu.get_tensordict(tensor_dict={
        "input_ids": torch.nested.as_nested_tensor(rows["input_ids"][:2], layout=torch.jagged),
        "loss_mask": torch.nested.as_nested_tensor(rows["loss_mask"][:2], layout=torch.jagged),
        "multi_modal_inputs": [{"input_features": f, "feature_attention_mask": torch.ones(1, f.shape[-1])}
                               for f in features]})

    class AudioModel(torch.nn.Module):
        def forward(self, input_ids, input_features=None, feature_attention_mask=None):
            return input_features, feature_attention_mask

    model = AudioModel()
    with engine._audio_inputs(model, batch):
        got, got_mask = model(torch.zeros(1))
    refused = None
    try:
        with engine._audio_inputs(gpt_chunk, batch):
            pass
    except ValueError as exc:
        refused = str(exc)
    return dict(audio_shape=list(got.shape), audio_mask_sum=float(got_mask.sum()), audio_refused=refused,
                audio_after=model(torch.zeros(1))[0] is None)


def run_engine(spec: dict) -> dict:
    """MAPOMegatronEngine.forward_backward_batch through veRL's own schedule, ppo_loss and metrics."""
    from types import SimpleNamespace

    from verl.workers.config import McoreActorConfig
    from verl.workers.utils.losses import ppo_loss

    from mapo_verl.config import AttentionLossConfig, MAPOConfig, MAPOPolicyLossConfig
    from mapo_verl.verl_ext.megatron_engine import MAPOMegatronEngine

    layers = spec["layers"]
    ps.initialize_model_parallel(1, 1)
    torch.manual_seed(3)
    weights = {n: p.detach().clone() for n, p in global_names(
        build_chunks(make_config(spec, tp=1, pp=1, vpp=None, recompute=None), None)[0]).items()}
    ps.destroy_model_parallel()
    ddp = spec.get("ddp", False)
    batch, rows = make_verl_batch(4, seed=21 + (dist.get_rank() if ddp else 0))
    all_rows = rows
    if ddp:  # the reference sees every data-parallel rank's rows
        other = make_verl_batch(4, seed=21 + 1 - dist.get_rank())[1]
        all_rows = {key: (rows[key] + other[key]) if dist.get_rank() == 0 else (other[key] + rows[key])
                    for key in rows}
    ref = engine_reference(spec, weights, all_rows, layers)

    ps.initialize_model_parallel(spec["tp"], spec["pp"])
    try:
        config = make_config(spec, tp=spec["tp"], pp=spec["pp"], vpp=None, recompute=spec.get("recompute"))
        config.variable_seq_lengths = True  # as veRL's engine: p2p shapes are exchanged per micro-batch
        chunks = build_chunks(config, None)
        for chunk in chunks:
            chunk.register_forward_pre_hook(padding_to_causal_mask, with_kwargs=True)
            with torch.no_grad():
                for name, param in global_names(chunk).items():
                    param.copy_(tp_slice(weights[name], param))
        engine = object.__new__(MAPOMegatronEngine)
        engine.engine_config = SimpleNamespace(
            dynamic_context_parallel=False, context_parallel_size=1, use_remove_padding=False,
            pad_bshd_to_minibatch_max=False, router_replay=SimpleNamespace(mode="disabled"), use_fused_kernels=False,
            pad_to_length=False, pad_to_length_bucket=None, entropy_from_logits_with_chunking=False)
        engine.model_config = SimpleNamespace(
            hf_config=SimpleNamespace(architectures=["Qwen2ForCausalLM"], audio_token_id=AUDIO_ID),
            tokenizer=SimpleNamespace(pad_token_id=0), mtp=SimpleNamespace(enable=False, enable_train=False))
        wrapped = chunks
        if ddp:
            from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

            wrapped = [DistributedDataParallel(config, DistributedDataParallelConfig(), chunk) for chunk in chunks]
        engine.tf_config, engine.module, engine.enable_routing_replay = config, wrapped, False

        def gradient(param):
            grad = param.main_grad if ddp else param.grad  # DDP accumulates into its reduced buffer
            return grad.clone() if grad is not None else torch.zeros_like(param)

        def step(coef: float):
            actor = McoreActorConfig(
                strategy="megatron", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, use_dynamic_bsz=False,
                loss_agg_mode="seq-mean-token-mean", rollout_n=1, policy_loss=MAPOPolicyLossConfig(
                    mapo=MAPOConfig(attention=AttentionLossConfig(coef=coef, layers=layers))))
            for chunk in wrapped:
                chunk.zero_grad_buffer() if ddp else chunk.zero_grad(set_to_none=True)
            output = engine.forward_backward_batch(batch.clone(), partial(ppo_loss, config=actor))
            for chunk in wrapped if ddp else []:
                chunk.finish_grad_sync()  # the average over data-parallel ranks
            grads = {n: gradient(p) for chunk in chunks for n, p in global_names(chunk).items()}
            return output, grads

        with_attn, grads_with = step(ETA)
        _, grads_without = step(0.0)
        worst, scale = 0.0, 0.0
        for chunk in chunks:
            for name, param in global_names(chunk).items():
                expected = ETA * tp_slice(ref["grads"][name], param)
                worst = max(worst, float((grads_with[name] - grads_without[name] - expected).abs().max()))
                scale = max(scale, float(expected.abs().max()))
        metrics = with_attn.get("metrics", {})
        audio = check_audio_inputs(engine, chunks[0], rows)
        return dict(**audio,
            grad_rel=worst / max(scale, 1e-30), grad_scale=scale, attn_ref=ref["attn"],
            audio_mass_ref=ref["audio_mass"],
            attn=metrics["mapo/attn_loss"].aggregate() if "mapo/attn_loss" in metrics else None,
            audio_mass=metrics["mapo/audio_mass"].aggregate() if "mapo/audio_mass" in metrics else None,
            metric_names=sorted(k for k in metrics if k.startswith("mapo/")),
            pp_rank=ps.get_pipeline_model_parallel_rank(), dp_size=ps.get_data_parallel_world_size())
    finally:
        ps.destroy_model_parallel()


def run_scenario(name: str) -> dict:
    if name == "cp2_unfused":
        return run_cp_refusal()
    if name.startswith("engine"):
        return run_engine(SCENARIOS[name])
    spec = SCENARIOS[name]
    data = make_data(spec.get("micro_batches", 2), seed=11)
    if spec.get("expect_error"):
        ps.initialize_model_parallel(spec["tp"], spec["pp"])
        try:
            chunks = build_chunks(make_config(spec, tp=spec["tp"], pp=spec["pp"], vpp=None, recompute=None), None)
            AudioMassHook(chunks, spec["layers"], config_key="mapo.attention.layers")
            return dict(error=None)
        except ValueError as exc:
            return dict(error=str(exc))
        finally:
            ps.destroy_model_parallel()
    ref = run_reference(spec, weights_seed=5, data=data)
    return run_hooked(spec, ref, data)


if __name__ == "__main__":
    serve_rank(run_scenario)
