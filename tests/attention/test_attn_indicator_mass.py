"""indicator_v_mass: the audio mass through transformers' attention functions (docs/DESIGN.md "The attention branch").

References are explicit float64 softmax probabilities; gradients are checked by
``torch.autograd.gradcheck`` (sdpa, float64) and against the explicit softmax (eager).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

from tests.attention.attention_testlib import tiny_qwen2
from mapo_verl.hf import indicator_v_mass

B, H, H_KV, S, D = 2, 4, 2, 7, 4
SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]


def _module():
    module = tiny_qwen2(dtype=torch.float64).model.layers[0].self_attn
    assert module.num_key_value_groups == H // H_KV
    return module


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, D, dtype=torch.float64, generator=generator, requires_grad=True)
    k = torch.randn(B, H_KV, S, D, dtype=torch.float64, generator=generator, requires_grad=True)
    v = torch.randn(B, H_KV, S, D, dtype=torch.float64, generator=generator)
    audio = torch.zeros(B, S, dtype=torch.bool)
    audio[0, 1:4] = True
    audio[1, [0, 2, 5]] = True
    return q, k, v, audio


def _padding_mask(kind: str):
    """``None`` (kernel's own causal mask) or a bool [B, 1, S, S] causal mask with a right-padded row."""
    if kind == "causal":
        return None
    mask = torch.ones(S, S, dtype=torch.bool).tril().expand(B, 1, S, S).clone()
    mask[1, :, :, S - 2:] = False  # row 1: last two keys are padding
    mask[1, :, S - 2:, S - 2:] = torch.eye(2, dtype=torch.bool)  # padded queries still see themselves
    return mask


def _explicit_mass(q, k, mask, audio, head_reduce):
    keys = k.repeat_interleave(H // H_KV, dim=1)
    scores = q @ keys.transpose(-1, -2) * D**-0.5
    allowed = torch.ones(S, S, dtype=torch.bool).tril() if mask is None else mask
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    mass = (probs * audio[:, None, None, :].to(probs.dtype)).sum(-1)
    return mass.amax(1) if head_reduce == "max" else mass.mean(1)


def _eager_mask(mask):
    """eager_attention_forward takes an additive float mask."""
    allowed = torch.ones(S, S, dtype=torch.bool).tril().expand(B, 1, S, S) if mask is None else mask
    return torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)


@pytest.mark.parametrize("head_reduce", ["max", "mean"])
@pytest.mark.parametrize("mask_kind", ["causal", "padded"])
def test_sdpa_mass_matches_explicit_softmax_and_passes_gradcheck(head_reduce, mask_kind):
    module = _module()
    q, k, v, audio = _inputs()
    mask = _padding_mask(mask_kind)

    def mass(q_, k_):
        return indicator_v_mass(SDPA, module, q_, k_, v, mask, audio, dropout=0.0, scaling=D**-0.5,
                                head_reduce=head_reduce)

    torch.testing.assert_close(mass(q, k), _explicit_mass(q, k, mask, audio, head_reduce), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(mass, (q, k), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("mask_kind", ["causal", "padded"])
def test_eager_mass_and_gradients_match_explicit_softmax(mask_kind):
    """eager runs its softmax in float32 even for float64 inputs, hence the 1e-6 tolerance."""
    module = _module()
    q, k, v, audio = _inputs(seed=3)
    mask = _padding_mask(mask_kind)
    weights = torch.randn(B, S, dtype=torch.float64)
    got = indicator_v_mass(eager_attention_forward, module, q, k, v, _eager_mask(mask), audio, dropout=0.0,
                           scaling=D**-0.5, head_reduce="max")
    dq, dk = torch.autograd.grad((got * weights).sum(), (q, k))
    want = _explicit_mass(q, k, mask, audio, "max")
    dq_ref, dk_ref = torch.autograd.grad((want * weights).sum(), (q, k))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(dq, dq_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dk, dk_ref, rtol=1e-5, atol=1e-6)


def test_no_attention_sized_tensor_in_the_sdpa_mass_path():
    """Forward and backward of the sdpa mass never produce a tensor with B·H·S·S elements."""
    module = _module()
    length = 96
    q = torch.randn(B, H, length, D, requires_grad=True)
    k = torch.randn(B, H_KV, length, D, requires_grad=True)
    v = torch.randn(B, H_KV, length, D)
    audio = torch.zeros(B, length, dtype=torch.bool)
    audio[:, 10:40] = True

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
            return out

    with LargestTensor() as recorder:
        mass = indicator_v_mass(SDPA, module.float(), q, k, v, None, audio, dropout=0.0, scaling=D**-0.5)
        mass.sum().backward()
    assert q.grad is not None and k.grad is not None
    assert recorder.largest < B * H * length * length // 8, recorder.largest


def test_dropout_is_rejected():
    module = _module()
    q, k, v, audio = _inputs()
    with pytest.raises(ValueError, match="dropout"):
        indicator_v_mass(SDPA, module, q, k, v, None, audio, dropout=0.1, scaling=D**-0.5)


def test_audio_mask_must_match_the_key_layout():
    module = _module()
    q, k, v, _ = _inputs()
    with pytest.raises(ValueError, match="audio_key_mask has shape"):
        indicator_v_mass(SDPA, module, q, k, v, None, torch.zeros(B, S + 1, dtype=torch.bool), dropout=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs CUDA")
def test_flash_attention_mass_matches_explicit_softmax():
    pytest.importorskip("flash_attn")
    flash = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]
    module = tiny_qwen2(dtype=torch.bfloat16).cuda().model.layers[0].self_attn
    module.config._attn_implementation = "flash_attention_2"
    head_dim, length = 64, 256
    generator = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, length, head_dim, device="cuda", generator=generator)
    k = torch.randn(B, H_KV, length, head_dim, device="cuda", generator=generator)
    audio = torch.zeros(B, length, dtype=torch.bool, device="cuda")
    audio[:, 20:120] = True
    q_bf, k_bf = q.bfloat16().requires_grad_(), k.bfloat16().requires_grad_()
    got = indicator_v_mass(flash, module, q_bf, k_bf, k_bf.detach(), None, audio, dropout=0.0,
                           scaling=head_dim**-0.5)
    keys = k_bf.detach().double().repeat_interleave(H // H_KV, dim=1)
    scores = q_bf.detach().double() @ keys.transpose(-1, -2) * head_dim**-0.5
    causal = torch.ones(length, length, dtype=torch.bool, device="cuda").tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    want = (probs * audio[:, None, None, :].double()).sum(-1).amax(1)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-2)  # bf16 output
    got.sum().backward()
    assert torch.isfinite(q_bf.grad).all() and torch.isfinite(k_bf.grad).all()
