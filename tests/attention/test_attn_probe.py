"""AudioMassProbe on real tiny HF models: masses, layouts, hook lifetime, checkpointing."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import mapo_verl.hf.probe as probe_module
from tests.attention.attention_testlib import (
    AUDIO_ID,
    explicit_audio_mass,
    omni_samples,
    right_pad,
    tiny_omni_thinker,
    tiny_qwen2,
    tiny_qwen3_omni_thinker,
)
from mapo_verl.modalities import AUDIO, placeholder_token_id
from mapo_verl.core import resolve_layers
from mapo_verl.hf import AudioMassProbe, decoder_layers

LAYERS = [0, -1]


def _qwen2_batch():
    generator = torch.Generator().manual_seed(7)
    sequences = []
    for length, audio in ((12, slice(2, 7)), (9, slice(1, 4)), (5, slice(0, 2))):
        seq = torch.randint(1, 90, (length,), generator=generator)
        seq[audio] = AUDIO_ID
        sequences.append(seq)
    return sequences


def _masses(model, audio_keys, **inputs):
    probe = AudioMassProbe(model, LAYERS, head_reduce="max")
    with probe.capture(audio_keys) as capture:
        model(**inputs, use_cache=False)  # as veRL: a cache would disable packed-sequence masking
        return capture.mass("mean")


@pytest.mark.parametrize("head_reduce", ["max", "mean"])
@pytest.mark.parametrize("layer_reduce", ["mean", "max"])
def test_eager_mass_equals_output_attentions_mass(head_reduce, layer_reduce):
    model = tiny_qwen2("eager")
    ids, mask = right_pad(_qwen2_batch())
    audio = (ids == AUDIO_ID) & mask.bool()
    probe = AudioMassProbe(model, LAYERS, head_reduce=head_reduce)
    with probe.capture(audio) as capture:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        got = capture.mass(layer_reduce)
    want = explicit_audio_mass(out.attentions, audio, resolve_layers(LAYERS, 3), head_reduce, layer_reduce)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid].detach(), rtol=0, atol=1e-6)


def test_sdpa_equals_eager():
    ids, mask = right_pad(_qwen2_batch())
    audio = (ids == AUDIO_ID) & mask.bool()
    eager = _masses(tiny_qwen2("eager"), audio, input_ids=ids, attention_mask=mask)
    sdpa = _masses(tiny_qwen2("sdpa"), audio, input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(sdpa[valid], eager[valid], rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_packed_batch_equals_padded_batch(implementation):
    """veRL's remove-padding layout: one row, positions restarting per sequence, no mask."""
    model = tiny_qwen2(implementation)
    sequences = _qwen2_batch()
    ids, mask = right_pad(sequences)
    padded = _masses(model, (ids == AUDIO_ID) & mask.bool(), input_ids=ids, attention_mask=mask)
    packed_ids = torch.cat(sequences)[None, :]
    positions = torch.cat([torch.arange(len(s)) for s in sequences])[None, :]
    packed = _masses(model, packed_ids == AUDIO_ID, input_ids=packed_ids, position_ids=positions)
    torch.testing.assert_close(packed[0], padded[mask.bool()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_omni_thinker_padded_packed_and_explicit(implementation):
    """Qwen2.5-Omni thinker with real audio features (mRoPE positions, GQA)."""
    model = tiny_omni_thinker(implementation)
    sequences, features, feature_mask = omni_samples(model, [[5, 6, 7, 8], [9, 10]], [20, 12])
    ids, mask = right_pad(sequences)
    audio = (ids == AUDIO_ID) & mask.bool()
    inputs = dict(input_features=features, feature_attention_mask=feature_mask)
    padded = _masses(model, audio, input_ids=ids, attention_mask=mask, **inputs)

    reference_model = tiny_omni_thinker("eager")
    out = reference_model(input_ids=ids, attention_mask=mask, output_attentions=True, **inputs)
    want = explicit_audio_mass(out.attentions, audio, resolve_layers(LAYERS, 3), "max", "mean")
    torch.testing.assert_close(padded[mask.bool()], want[mask.bool()].detach(), rtol=0, atol=1e-6)

    # Packed: text positions in row 0, the three mRoPE rows from the model's own rope index.
    rope_rows = [model.get_rope_index(s[None, :], attention_mask=torch.ones(1, len(s), dtype=torch.long),
                                      audio_seqlens=feature_mask[i: i + 1].sum(1))[0] for i, s in enumerate(sequences)]
    text_rows = [torch.arange(len(s))[None, None, :] for s in sequences]
    positions = torch.cat([torch.cat(text_rows, dim=-1), torch.cat(rope_rows, dim=-1)], dim=0)  # [4, 1, total]
    packed_ids = torch.cat(sequences)[None, :]
    packed = _masses(model, packed_ids == AUDIO_ID, input_ids=packed_ids, position_ids=positions, **inputs)
    torch.testing.assert_close(packed[0], padded[mask.bool()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_qwen3_omni_thinker(implementation):
    """Qwen3-Omni's text attention (q/k RMS norms before RoPE, MoE blocks) through the same hook."""
    model = tiny_qwen3_omni_thinker(implementation)
    if model is None:
        pytest.skip("this transformers has no Qwen3-Omni")
    reference = tiny_qwen3_omni_thinker("eager")
    ids, mask = right_pad(_qwen2_batch())
    audio = (ids == AUDIO_ID) & mask.bool()
    got = _masses(model, audio, input_ids=ids, attention_mask=mask)
    out = reference(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
    want = explicit_audio_mass(out.attentions, audio, resolve_layers(LAYERS, 2), "max", "mean")
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()].detach(), rtol=0, atol=1e-6)


def test_hooks_are_removed_on_exit_and_on_error():
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    model, other = tiny_qwen2("sdpa"), tiny_qwen2("sdpa", seed=1)
    ids = torch.tensor([[1, AUDIO_ID, AUDIO_ID, 4, 5]])
    first, second = AudioMassProbe(model, [-1]), AudioMassProbe(other, [0])
    with first.capture(ids == AUDIO_ID), second.capture(ids == AUDIO_ID):
        assert "get_interface" in vars(ALL_ATTENTION_FUNCTIONS)
        with pytest.raises(RuntimeError, match="already carry"):
            with AudioMassProbe(model, [-1]).installed():
                pass
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    with pytest.raises(ValueError, match="boom"):
        with first.capture(ids == AUDIO_ID):
            raise ValueError("boom")
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    with pytest.raises(RuntimeError, match="needs the hooks installed"):
        first.begin(ids == AUDIO_ID)


def test_no_grad_passes_are_untouched(monkeypatch):
    calls = []
    original = probe_module.indicator_v_mass
    monkeypatch.setattr(probe_module, "indicator_v_mass", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = tiny_qwen2("sdpa")
    ids = torch.tensor([[1, AUDIO_ID, AUDIO_ID, 4, 5]])
    probe = AudioMassProbe(model, LAYERS)
    with probe.capture(ids == AUDIO_ID) as capture:
        with torch.no_grad():
            logits_hooked = model(input_ids=ids).logits
        assert calls == []
        with pytest.raises(RuntimeError, match="no audio mass was recorded"):
            capture.mass()
        model(input_ids=ids)
        assert len(calls) == len(LAYERS)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits_hooked)


def test_second_forward_in_one_capture_is_an_error():
    model = tiny_qwen2("sdpa")
    ids = torch.tensor([[1, AUDIO_ID, 3]])
    with AudioMassProbe(model, [-1]).capture(ids == AUDIO_ID):
        model(input_ids=ids)
        with pytest.raises(RuntimeError, match="ran twice"):
            model(input_ids=ids)


def _gradients(model, ids, mask, checkpointing):
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model.zero_grad()
    audio = (ids == AUDIO_ID) & mask.bool()
    with AudioMassProbe(model, LAYERS).capture(audio) as capture:
        logits = model(input_ids=ids, attention_mask=mask).logits
        mass = capture.mass()
        loss = logits.logsumexp(-1)[mask.bool()].mean() - torch.log(mass[mask.bool()] + 1e-6).mean()
        loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_non_reentrant_checkpointing_gives_the_same_gradients(implementation, monkeypatch):
    calls = []
    original = probe_module.indicator_v_mass
    monkeypatch.setattr(probe_module, "indicator_v_mass", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids, mask = right_pad(_qwen2_batch())
    plain = _gradients(tiny_qwen2(implementation), ids, mask, checkpointing=False)
    assert len(calls) == len(LAYERS)
    calls.clear()
    checkpointed = _gradients(tiny_qwen2(implementation), ids, mask, checkpointing=True)
    assert len(calls) == 2 * len(LAYERS)  # forward + recomputation in backward
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_reentrant_checkpointing_fails_clearly():
    model = tiny_qwen2("sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    ids, mask = right_pad(_qwen2_batch())
    with AudioMassProbe(model, LAYERS).capture((ids == AUDIO_ID) & mask.bool()) as capture:
        model(input_ids=ids, attention_mask=mask)
        with pytest.raises(RuntimeError, match="reentrant"):
            capture.mass()


def test_decoder_discovery_layers_and_audio_token():
    thinker = tiny_omni_thinker()
    assert decoder_layers(thinker) is thinker.model.layers  # not the audio tower's layers
    assert placeholder_token_id(thinker, AUDIO) == AUDIO_ID
    audio_lm = Qwen2AudioForConditionalGeneration(Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16,
                          d_model=16, max_source_positions=32),
        text_config=dict(model_type="qwen2", vocab_size=128, hidden_size=32, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        audio_token_id=99))
    assert len(decoder_layers(audio_lm)) == 2
    assert placeholder_token_id(audio_lm, AUDIO) == 99
    with pytest.raises(ValueError, match="no audio_token_id"):
        placeholder_token_id(tiny_qwen2(), AUDIO)
    assert resolve_layers([-1, 0, -2], 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"mapo\.attention\.layers.*out of range"):
        resolve_layers([3], 3)
    with pytest.raises(ValueError, match="same layer twice"):
        resolve_layers([-1, 2], 3)
