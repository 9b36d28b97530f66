"""MAPO's FSDP engine on veRL 0.9.1's real engine code (CPU, one-process gloo group).

The reference attention loss is computed here from explicit eager attention probabilities
and the method's formula (docs/DESIGN.md), with its own index arithmetic for response positions.
"""

from __future__ import annotations

import pytest
import torch

from tests.attention.attention_testlib import (
    AUDIO_END_ID,
    AUDIO_ID,
    AUDIO_START_ID,
    explicit_audio_mass,
    right_pad,
    tiny_omni_thinker,
    tiny_qwen3_omni_thinker,
)
from tests.attention.engine_testlib import actor_batch, actor_loss, make_engine, run
from mapo_verl.core import resolve_layers
from mapo_verl.hf import decoder_layers
from mapo_verl.core.contract import COEF_FIELD, GATE_FIELD
from mapo_verl.verl_ext.fsdp_engine import MAPOFSDPEngineWithLMHead

ETA = 0.05
LAYERS = (-2, -1)
THINKERS = {"qwen2_5_omni": tiny_omni_thinker, "qwen3_omni_moe": tiny_qwen3_omni_thinker}


def _model(implementation="sdpa", thinker="qwen2_5_omni"):
    return THINKERS[thinker](implementation, dtype=torch.float64)


def _reference_attention_loss(reference, *, audio_free_row=None, head_reduce="max", layer_reduce="mean",
                              thinker="qwen2_5_omni"):
    """The method's ``L_attn`` (docs/DESIGN.md "The method") from explicit probabilities; returns (L, reference model grads, response masses)."""
    model = _model("eager", thinker)
    rows = [r for r in range(len(reference["sequences"])) if r != audio_free_row]
    ids, mask = right_pad(reference["sequences"])
    out = model(input_ids=ids, attention_mask=mask, input_features=reference["features"][rows],
                feature_attention_mask=reference["feature_mask"][rows], output_attentions=True, use_cache=False)
    # audio keys: placeholders and the audio start/end markers (attention.include_audio_markers=true)
    audio = ((ids == AUDIO_ID) | (ids == AUDIO_START_ID) | (ids == AUDIO_END_ID)) & mask.bool()
    layers = resolve_layers(list(LAYERS), len(decoder_layers(model)))
    mass = explicit_audio_mass(out.attentions, audio, layers, head_reduce, layer_reduce)
    total, sequences, response_masses = 0.0, 0, []
    for g in rows:
        prompt, length = reference["prompt_lengths"][g], int(reference["response_mask"][g].sum())
        # response token t (1-based) is predicted by the query at 0-based position prompt + t - 2
        a = mass[g, prompt - 1: prompt - 1 + length]
        coef = reference[COEF_FIELD][g, :length].double()
        gate = reference[GATE_FIELD][g, :length].bool()
        sequences += 1
        response_masses.append(a.detach())
        if gate.any():
            total = total + (coef[gate] * -torch.log(a[gate] + 1e-6)).sum() / gate.sum()
    loss = total / sequences
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.cat(response_masses)


def _close(got: dict, want: dict, rtol, atol_scale):
    assert got.keys() == want.keys()
    scale = max(w.abs().max() for w in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol_scale * scale, msg=name)


@pytest.mark.parametrize("use_remove_padding", [True, False])
@pytest.mark.parametrize("coef", [0.0, None])
def test_eta_zero_is_bit_identical_to_veRL(cpu_engine, use_remove_padding, coef):
    model = _model()
    data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=use_remove_padding)
    loss, grads, metrics = run(make_engine(model), data, actor_loss(coef))
    parent_loss, parent_grads, parent_metrics = run(make_engine(model, mapo=False), data, actor_loss(coef))
    assert loss == parent_loss
    assert grads.keys() == parent_grads.keys()
    assert all(torch.equal(grads[name], parent_grads[name]) for name in grads)
    assert metrics.keys() == parent_metrics.keys()


@pytest.mark.parametrize("thinker", THINKERS)
@pytest.mark.parametrize("use_remove_padding", [True, False])
def test_attention_loss_and_gradient_match_explicit_reference(cpu_engine, use_remove_padding, thinker):
    model = _model(thinker=thinker)
    data, reference = actor_batch(model, micro_batch_size=2, use_remove_padding=use_remove_padding)
    loss, grads, metrics = run(make_engine(model), data, actor_loss(ETA, layers=LAYERS))
    base_loss, base_grads, _ = run(make_engine(model, mapo=False), data, actor_loss(ETA, layers=LAYERS))
    want_loss, want_grads, response_masses = _reference_attention_loss(reference, thinker=thinker)

    # eager's float32 softmax in the reference sets the tolerances
    assert loss - base_loss == pytest.approx(ETA * want_loss.item(), rel=1e-6)
    assert sum(metrics["mapo/attn_loss"].values) == pytest.approx(want_loss.item(), rel=1e-6)
    assert metrics["mapo/audio_mass"].aggregate() == pytest.approx(response_masses.mean().item(), rel=1e-6)
    assert any(name.startswith("audio_tower") for name in grads)  # audio features reach the model
    # parameters after the last hooked attention (MLP of the last layer, lm_head) get no attention gradient
    want = {k: ETA * want_grads[k] if k in want_grads else torch.zeros_like(grads[k]) for k in grads}
    _close({k: grads[k] - base_grads[k] for k in grads}, want, rtol=1e-5, atol_scale=1e-6)


@pytest.mark.parametrize("thinker", THINKERS)
def test_rows_without_audio_are_left_out(cpu_engine, thinker):
    model = _model(thinker=thinker)
    data, reference = actor_batch(model, micro_batch_size=2, use_remove_padding=True, audio_free_row=1)
    loss, _, metrics = run(make_engine(model), data, actor_loss(ETA, layers=LAYERS))
    base_loss, _, _ = run(make_engine(model, mapo=False), data, actor_loss(ETA, layers=LAYERS))
    want_loss, _, response_masses = _reference_attention_loss(reference, audio_free_row=1, thinker=thinker)
    assert loss - base_loss == pytest.approx(ETA * want_loss.item(), rel=1e-6)
    assert metrics["mapo/audio_mass"].aggregate() == pytest.approx(response_masses.mean().item(), rel=1e-6)


@pytest.mark.parametrize("loss_agg_mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
def test_loss_and_gradients_do_not_depend_on_the_micro_batch_split(cpu_engine, loss_agg_mode):
    model = _model()
    results = {}
    for micro_batch_size in (4, 2, 1):
        for use_remove_padding in (True, False):
            data, _ = actor_batch(model, micro_batch_size=micro_batch_size, use_remove_padding=use_remove_padding)
            loss_function = actor_loss(ETA, loss_agg_mode=loss_agg_mode, layers=LAYERS)
            results[micro_batch_size, use_remove_padding] = run(make_engine(model), data, loss_function)
    (loss, grads, metrics), *others = results.values()
    for other_loss, other_grads, other_metrics in others:
        assert other_loss == pytest.approx(loss, rel=1e-10)
        assert sum(other_metrics["mapo/attn_loss"].values) == pytest.approx(sum(metrics["mapo/attn_loss"].values),
                                                                             rel=1e-10)
        assert other_metrics["mapo/audio_mass"].aggregate() == pytest.approx(metrics["mapo/audio_mass"].aggregate(),
                                                                              rel=1e-10)
        _close(other_grads, grads, rtol=1e-9, atol_scale=1e-12)


def test_nested_response_fields_give_the_same_result(cpu_engine):
    """The v1 trainer hands response-aligned fields over as nested tensors."""
    model = _model()
    padded = run(make_engine(model), actor_batch(model, micro_batch_size=2, use_remove_padding=True)[0],
                 actor_loss(ETA, layers=LAYERS))
    nested_data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True, nested_response_fields=True)
    assert nested_data[COEF_FIELD].is_nested
    nested = run(make_engine(model), nested_data, actor_loss(ETA, layers=LAYERS))
    assert nested[0] == pytest.approx(padded[0], rel=1e-12)
    _close(nested[1], padded[1], rtol=1e-10, atol_scale=1e-12)


def test_gradient_checkpointing_in_the_engine(cpu_engine):
    plain_model, checkpointed_model = _model(), _model()
    checkpointed_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    results = []
    for model in (plain_model, checkpointed_model):
        model.train()
        data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
        results.append(run(make_engine(model), data, actor_loss(ETA, layers=LAYERS)))
    (loss, grads, _), (checkpointed_loss, checkpointed_grads, _) = results
    assert checkpointed_loss == pytest.approx(loss, rel=1e-12)
    _close(checkpointed_grads, grads, rtol=1e-9, atol_scale=1e-12)


def test_metrics_by_response_position(cpu_engine):
    model = _model()
    data, reference = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
    _, _, metrics = run(make_engine(model), data, actor_loss(ETA, layers=LAYERS))
    _, _, masses = _reference_attention_loss(reference)
    lengths = [int(row.sum()) for row in reference["response_mask"]]
    deciles = torch.cat([torch.arange(n) * 10 // n for n in lengths])
    for k in range(10):
        key = f"mapo/audio_mass/decile_{k}"
        if (deciles == k).any():
            assert metrics[key].aggregate() == pytest.approx(masses[deciles == k].mean().item(), rel=1e-6)
        else:
            assert key not in metrics
    early, late = masses[deciles < 2].mean(), masses[deciles >= 8].mean()
    assert metrics["mapo/audio_mass/late_early_ratio"].aggregate() == pytest.approx((late / early).item(), rel=1e-6)


def test_forward_only_passes_are_the_parent_s(cpu_engine):
    model = _model()
    data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
    with torch.no_grad():
        ours = make_engine(model).forward_backward_batch(data, actor_loss(ETA), forward_only=True)
        theirs = make_engine(model, mapo=False).forward_backward_batch(data, actor_loss(ETA), forward_only=True)
    assert ours["loss"] == theirs["loss"]
    assert torch.equal(ours["model_output"]["log_probs"].values(), theirs["model_output"]["log_probs"].values())


def test_missing_trainer_fields_fail_naming_them(cpu_engine):
    model = _model()
    data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
    del data[COEF_FIELD]
    with pytest.raises(KeyError, match=COEF_FIELD):
        make_engine(model).forward_backward_batch(data, actor_loss(ETA), forward_only=False)


def test_registered_for_the_mapo_vendor():
    from verl.workers.engine import EngineRegistry

    for backend in ("fsdp", "fsdp2"):
        for device in ("cuda", "npu"):
            assert EngineRegistry._engines["language_model"][backend][device, "mapo"] is MAPOFSDPEngineWithLMHead


def test_fsdp2_wrapped_model_with_checkpointing_matches_the_plain_model(cpu_engine):
    """fully_shard frees unsharded weights after each layer's forward: the mass branch's backward
    must run while FSDP2 has them gathered again (and recomputation must see the hooks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plain, wrapped = _model(), _model()
    wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    wrapped.train()
    mesh = init_device_mesh("cpu", (1,))
    for layer in wrapped.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(wrapped, mesh=mesh)
    data, _ = actor_batch(plain, micro_batch_size=2, use_remove_padding=True)
    loss, grads, _ = run(make_engine(plain), data, actor_loss(ETA, layers=LAYERS))
    wrapped_loss, wrapped_grads, _ = run(make_engine(wrapped), data, actor_loss(ETA, layers=LAYERS))
    assert wrapped_loss == pytest.approx(loss, rel=1e-12)
    _close({k: g.full_tensor() for k, g in wrapped_grads.items()}, grads, rtol=1e-9, atol_scale=1e-12)


def test_sequence_parallelism_is_refused(cpu_engine):
    model = _model()
    engine = make_engine(model)
    engine.ulysses_sequence_parallel_size = 2
    data, _ = actor_batch(model, micro_batch_size=2, use_remove_padding=True)
    with pytest.raises(NotImplementedError, match="sequence parallel"):
        engine.forward_backward_batch(data, actor_loss(ETA), forward_only=False)
