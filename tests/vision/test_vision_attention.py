"""Image-key attention mass on a tiny random Qwen2.5-VL through MAPO's indicator-V hooks (``mapo_verl.hf``), with
the image placeholders and vision markers as keys (``mapo_verl.modalities``).

References never call the code under test: masses come from the explicit softmax probabilities eager attention
returns with ``output_attentions=True``; the gradient is checked against them and by ``gradcheck``.
"""

import pytest
import torch

from mapo_verl.core import attention_objective_from_coefficients, resolve_layers
from mapo_verl.hf import AudioMassProbe, decoder_layers, indicator_v_mass
from mapo_verl.hf.attention import attention_interface_hook
from mapo_verl.modalities import IMAGE, key_mask, key_token_ids
from tests.attention.attention_testlib import explicit_audio_mass
from tests.vision.vl_testlib import image_sample, tiny_qwen2_5_vl

LAYERS = [0, -1]
RESPONSE = 8
ETA = 0.05


def batch(dtype=torch.float64):
    """Two samples with different images of one grid, stacked (equal lengths, no padding)."""
    samples = [image_sample(seed=seed, dtype=dtype) for seed in (1, 2)]
    ids = torch.stack([ids for ids, _ in samples])
    inputs = {"pixel_values": torch.cat([mm["pixel_values"] for _, mm in samples]),
              "image_grid_thw": torch.cat([mm["image_grid_thw"] for _, mm in samples]),
              "mm_token_type_ids": torch.cat([mm["mm_token_type_ids"] for _, mm in samples])}
    return ids, dict(inputs, attention_mask=torch.ones_like(ids), use_cache=False)


def coefficients(ids):
    generator = torch.Generator().manual_seed(5)
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, -RESPONSE:] = True
    coef = torch.rand(ids.shape, generator=generator, dtype=torch.float64) * response
    return coef, response & (torch.rand(ids.shape, generator=generator) > 0.2)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("head_reduce,layer_reduce", [("max", "mean"), ("mean", "max")])
def test_image_mass_and_its_gradient_match_explicit_probabilities(implementation, head_reduce, layer_reduce):
    model = tiny_qwen2_5_vl(implementation, dtype=torch.float64).train()
    reference = tiny_qwen2_5_vl("eager", dtype=torch.float64).train()
    ids, inputs = batch()
    keys = key_mask(ids, key_token_ids(model.config, [IMAGE]))
    assert int(keys.sum()) == 2 * (4 + 2)  # per row: 4 placeholders and the two vision markers
    coef, gated = coefficients(ids)

    with AudioMassProbe(model, LAYERS, head_reduce=head_reduce).capture(keys) as capture:
        model(input_ids=ids, **inputs)
        mass = capture.mass(layer_reduce)
        loss = ETA * attention_objective_from_coefficients(mass, coef, gated, eps=1e-6)
        loss.backward()

    out = reference(input_ids=ids, **inputs, output_attentions=True)
    layers = resolve_layers(LAYERS, len(decoder_layers(reference)))
    want_mass = explicit_audio_mass(out.attentions, keys, layers, head_reduce, layer_reduce)
    want_loss = ETA * attention_objective_from_coefficients(want_mass, coef, gated, eps=1e-6)
    want_loss.backward()

    # eager's softmax runs in float32 even in a float64 model: that sets the tolerance
    torch.testing.assert_close(mass.double(), want_mass, rtol=1e-6, atol=1e-7)
    assert mass[:, -RESPONSE:].min() > 0  # response queries see the image
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=0)
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    want = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    assert any(name.startswith("model.visual") for name in got)  # the loss reaches the vision tower
    scale = max(g.abs().max() for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


class RecordCall:
    """A receiver that keeps the arguments of one attention call (a stand-in for MAPO's probe)."""

    def on_attention(self, module, attention_fn, query, key, value, attention_mask, args, kwargs):
        self.call = (attention_fn, module, query.detach(), key.detach(), value.detach(), attention_mask, args, kwargs)


@pytest.mark.slow  # ~35 s on 2 cores: finite differences over every element of q and k
def test_image_mass_gradient_passes_gradcheck():
    """The mass of the last decoder layer's real sdpa call in the VL model (mRoPE-rotated q / k, GQA, the model's
    mask) against finite differences in q and k (float64 end to end; the model's own RMSNorm and vision rotary
    round through float32, too coarse for finite differences of the whole model)."""
    model = tiny_qwen2_5_vl("sdpa", dtype=torch.float64).train()
    ids, inputs = batch()
    keys = key_mask(ids, key_token_ids(model.config, [IMAGE]))
    recorder = RecordCall()
    with attention_interface_hook({decoder_layers(model)[-1].self_attn: recorder}):
        model(input_ids=ids, **inputs)
    attention_fn, module, query, key, value, mask, args, kwargs = recorder.call
    assert query.dtype == torch.float64 and query.shape[1] == 2 * key.shape[1]  # GQA

    def mass(q, k):
        return indicator_v_mass(attention_fn, module, q, k, value, mask, keys, *args, head_reduce="max", **kwargs)

    q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
    assert mass(q, k)[:, -RESPONSE:].min() > 0
    assert torch.autograd.gradcheck(mass, (q, k), eps=1e-6, atol=1e-8, rtol=1e-6)
