"""Gradient of η·L_attn through tiny random Omni thinkers (Qwen2.5-Omni, Qwen3-Omni-MoE) vs explicit attention
probabilities."""

from __future__ import annotations

import pytest
import torch

from tests.attention.attention_testlib import (
    AUDIO_ID,
    explicit_audio_mass,
    omni_samples,
    right_pad,
    tiny_omni_thinker,
    tiny_qwen3_omni_thinker,
)
from mapo_verl.core import attention_objective_from_coefficients
from mapo_verl.core import resolve_layers
from mapo_verl.hf import AudioMassProbe, decoder_layers

ETA = 0.05
LAYERS = [0, -1]
THINKERS = {"qwen2_5_omni": tiny_omni_thinker, "qwen3_omni_moe": tiny_qwen3_omni_thinker}


def _batch(model):
    sequences, features, feature_mask = omni_samples(model, [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15]], [20, 12])
    ids, mask = right_pad(sequences)
    # the last 6 / 3 positions play the response; coefficients and a POS-like gate on them
    response = torch.zeros_like(mask, dtype=torch.bool)
    for row, length in enumerate(mask.sum(1).tolist()):
        response[row, length - (6 if row == 0 else 3): length] = True
    generator = torch.Generator().manual_seed(5)
    coef = torch.rand(ids.shape, generator=generator, dtype=torch.float32) * response
    gated = response & (torch.rand(ids.shape, generator=generator) > 0.2)
    return ids, mask, features, feature_mask, coef, gated


def _loss(mass, coef, gated):
    return ETA * attention_objective_from_coefficients(mass, coef, gated, eps=1e-6)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("thinker", THINKERS)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("head_reduce,layer_reduce", [("max", "mean"), ("mean", "max")])
def test_attention_loss_gradient_matches_explicit_probabilities(thinker, implementation, head_reduce, layer_reduce):
    model = THINKERS[thinker](implementation, dtype=torch.float64)
    if model is None:
        pytest.skip("this transformers has no Qwen3-Omni")
    reference = THINKERS[thinker]("eager", dtype=torch.float64)
    ids, mask, features, feature_mask, coef, gated = _batch(model)
    inputs = dict(input_ids=ids, attention_mask=mask, input_features=features, feature_attention_mask=feature_mask,
                  use_cache=False)
    audio = (ids == AUDIO_ID) & mask.bool()

    with AudioMassProbe(model, LAYERS, head_reduce=head_reduce).capture(audio) as capture:
        model(**inputs)
        loss = _loss(capture.mass(layer_reduce), coef, gated)
        loss.backward()

    out = reference(**inputs, output_attentions=True)
    mass = explicit_audio_mass(out.attentions, audio, resolve_layers(LAYERS, len(decoder_layers(reference))), head_reduce, layer_reduce)
    reference_loss = _loss(mass, coef, gated)
    reference_loss.backward()

    # eager's softmax runs in float32 even in a float64 model: that sets the tolerance.
    torch.testing.assert_close(loss, reference_loss, rtol=1e-6, atol=0)
    got, want = _grads(model), _grads(reference)
    assert got.keys() == want.keys()
    assert any(name.startswith("audio_tower") for name in got)  # the loss reaches the audio encoder
    scale = max(g.abs().max() for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6 * scale, msg=name)
