"""Run veRL 0.9.1's FSDP actor engine code on CPU, in-process, without FSDP wrapping.

``FSDPEngine.__init__`` builds CUDA device meshes, so the harness creates the engine object
without it and sets the attributes ``forward_backward_batch`` / ``forward_step`` read (the
same route veRL's own VeOmni engine takes). Everything else — micro-batching, input
preparation (packed or padded), ``prepare_model_outputs``, ``ppo_loss``, normalisation,
metrics — is veRL's real code. A one-process gloo group stands in for the dp group.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import left_right_2_no_padding, response_to_nested

from tests.attention.attention_testlib import omni_samples
from mapo_verl.config import AttentionLossConfig, MAPOConfig, MAPOPolicyLossConfig
from mapo_verl.core.contract import COEF_FIELD, GATE_FIELD
from mapo_verl.verl_ext.fsdp_engine import MAPOFSDPEngineWithLMHead

PROMPT_TAILS = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14]]
FEATURE_LENGTHS = [20, 12, 16, 8]
RESPONSE_LENGTHS = [6, 3, 5, 1]


def make_engine(model, *, mapo: bool = True):
    cls = MAPOFSDPEngineWithLMHead if mapo else FSDPEngineWithLMHead
    engine = cls.__new__(cls)
    engine.module = model
    engine.engine_config = SimpleNamespace(use_no_sync_for_gradient_accumulation=True, entropy_checkpointing=False,
                                           entropy_from_logits_with_chunking=False)
    engine.ulysses_sequence_parallel_size = 1
    engine.use_ulysses_sp = False
    engine.ulysses_device_mesh = None
    engine.pad_to_length = False
    engine.pad_to_length_bucket = 0
    engine._autocast_dtype = torch.float32  # no autocast: exact comparisons on CPU
    engine.scaler = None
    return engine


def actor_loss(coef: float | None, *, loss_agg_mode: str = "seq-mean-token-mean", layers=(-2, -1),
               head_reduce="max", layer_reduce="mean"):
    """veRL's ``partial(ppo_loss, config=actor_config)``; ``coef=None``: plain veRL policy-loss config."""
    kwargs = dict(strategy="fsdp2", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, use_dynamic_bsz=False,
                  loss_agg_mode=loss_agg_mode, rollout_n=1)
    if coef is not None:
        attention = AttentionLossConfig(coef=coef, layers=list(layers), head_reduce=head_reduce,
                                        layer_reduce=layer_reduce)
        kwargs["policy_loss"] = MAPOPolicyLossConfig(mapo=MAPOConfig(attention=attention))
    return functools.partial(ppo_loss, config=FSDPActorConfig(**kwargs))


def actor_batch(model, *, micro_batch_size: int, use_remove_padding: bool, nested_response_fields: bool = False,
                audio_free_row: int | None = None, rows: list[int] | None = None, seed: int = 0):
    """A veRL actor-update batch for the Omni thinker, built the way the trainer builds it.

    Prompts are left-padded and responses right-padded (the rollout layout); veRL's own
    ``left_right_2_no_padding`` turns it into the engine's no-padding layout. Position ids
    are ``[B, 4, S]``: the text row, then the model's own mRoPE rows. With
    ``nested_response_fields`` the response-aligned fields are nested like the v1 trainer's;
    ``audio_free_row`` makes one prompt text-only (no placeholders, no features); ``rows``
    keeps only those samples (one data-parallel rank's share of the same mini-batch).

    Returns the TensorDict and a dict of padded reference tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    prompts, features, feature_mask = omni_samples(model, PROMPT_TAILS, FEATURE_LENGTHS, seed=seed + 1)
    if audio_free_row is not None:
        prompts[audio_free_row] = torch.tensor([1, 2] + PROMPT_TAILS[audio_free_row])
    responses = [torch.randint(1, 90, (n,), generator=generator) for n in RESPONSE_LENGTHS]
    batch = len(prompts)
    prompt_len, response_len = max(map(len, prompts)), max(RESPONSE_LENGTHS) + 1  # +1: padded response columns
    total = prompt_len + response_len
    input_ids = torch.zeros(batch, total, dtype=torch.long)
    attention_mask = torch.zeros(batch, total, dtype=torch.long)
    position_ids = []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        sequence = torch.cat([prompt, response])
        columns = torch.arange(prompt_len - len(prompt), prompt_len + len(response))
        input_ids[row, columns] = sequence
        attention_mask[row, columns] = 1
        audio_seqlens = None if row == audio_free_row else feature_mask[row: row + 1].sum(1)
        rope, _ = model.get_rope_index(sequence[None], attention_mask=torch.ones(1, len(sequence), dtype=torch.long),
                                       audio_seqlens=audio_seqlens)
        # veRL's agent loop concatenates the long text row with the rope rows: float for Qwen3-Omni
        positions = torch.zeros(4, total, dtype=torch.promote_types(torch.long, rope.dtype))
        positions[0, columns] = torch.arange(len(sequence), dtype=positions.dtype)
        positions[1:, columns] = rope[:, 0].to(positions.dtype)
        position_ids.append(positions)
    position_ids = torch.stack(position_ids)
    response_mask = attention_mask[:, prompt_len:]
    shape = (batch, response_len)
    reference = dict(
        response_mask=response_mask,
        old_log_probs=-torch.rand(shape, generator=generator, dtype=torch.float64) * response_mask,
        advantages=torch.randn(shape, generator=generator, dtype=torch.float64) * response_mask,
        **{COEF_FIELD: torch.rand(shape, generator=generator) * response_mask,
           GATE_FIELD: (torch.rand(shape, generator=generator) > 0.3).long() * response_mask},
        sequences=[torch.cat([p, r]) for p, r in zip(prompts, responses)],
        prompt_lengths=[len(p) for p in prompts],
        features=features,
        feature_mask=feature_mask,
    )
    fields = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "prompts": input_ids[:, :prompt_len],
        "responses": input_ids[:, prompt_len:],
        "response_mask": response_mask,
        "old_log_probs": reference["old_log_probs"].to(next(model.parameters()).dtype),
        "advantages": reference["advantages"].to(next(model.parameters()).dtype),
        COEF_FIELD: reference[COEF_FIELD],
        GATE_FIELD: reference[GATE_FIELD],
        "multi_modal_inputs": [
            None if row == audio_free_row else
            {"input_features": features[row: row + 1, :, :length],
             "feature_attention_mask": feature_mask[row: row + 1, :length]}
            for row, length in enumerate(FEATURE_LENGTHS)
        ],
    }
    if rows is not None:
        fields = {key: [value[r] for r in rows] if isinstance(value, list) else value[rows]
                  for key, value in fields.items()}
    data = left_right_2_no_padding(tu.get_tensordict(fields))
    if nested_response_fields:
        nested_mask = torch.nested.as_nested_tensor([row[: int(row.sum())] for row in response_mask],
                                                    layout=torch.jagged)
        for key in ("responses", "old_log_probs", "advantages", COEF_FIELD, GATE_FIELD):
            data[key] = response_to_nested(data[key], nested_mask)
        data["response_mask"] = nested_mask
        data["prompts"] = torch.nested.as_nested_tensor(
            [row[-length:] for row, length in zip(data["prompts"], reference["prompt_lengths"])], layout=torch.jagged)
        tu.assign_non_tensor(data, max_response_len=-1)  # widths follow the nested responses
    tu.assign_non_tensor(data, temperature=1.0, use_remove_padding=use_remove_padding, use_dynamic_bsz=False,
                         micro_batch_size_per_gpu=micro_batch_size, global_batch_size=batch, calculate_entropy=False)
    return data, reference


def run(engine, data, loss_function):
    """One ``forward_backward_batch`` of the policy update: (summed loss, gradients, metrics)."""
    engine.module.zero_grad(set_to_none=True)
    output = engine.forward_backward_batch(data, loss_function, forward_only=False)
    grads = {name: p.grad.clone() for name, p in engine.module.named_parameters() if p.grad is not None}
    return sum(output["loss"]), grads, output["metrics"]


def data_parallel_rank(rank: int, world_size: int, workdir: str, coef: float,
                       loss_agg_modes: tuple[str, ...]) -> None:
    """One rank of a FSDP2 data-parallel run over gloo: its share of the mini-batch, one update's loss, gradients
    and metrics saved per loss aggregation mode (the same weights each time: no optimizer step)."""
    import torch.distributed
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import mapo_verl.verl_ext.fsdp_engine as fsdp_engine
    import verl.workers.engine.fsdp.transformer_impl as transformer_impl
    from tests.attention.attention_testlib import tiny_omni_thinker

    transformer_impl.get_device_id = fsdp_engine.get_device_id = lambda: "cpu"
    torch.distributed.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank,
                                         world_size=world_size)
    model = tiny_omni_thinker("sdpa", dtype=torch.float64)
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    share = len(PROMPT_TAILS) // world_size
    data, _ = actor_batch(model, micro_batch_size=1, use_remove_padding=True,
                          rows=list(range(rank * share, (rank + 1) * share)))
    engine = make_engine(model)
    for loss_agg_mode in loss_agg_modes:
        loss, grads, metrics = run(engine, data, actor_loss(coef, loss_agg_mode=loss_agg_mode))
        torch.save({"loss": loss, "grads": {k: g.full_tensor() for k, g in grads.items()},
                    "attn_loss": float(sum(metrics["mapo/attn_loss"].values)),
                    "audio_mass": float(metrics["mapo/audio_mass"].aggregate())},
                   f"{workdir}/rank{rank}_{loss_agg_mode}.pt")
    torch.distributed.destroy_process_group()
