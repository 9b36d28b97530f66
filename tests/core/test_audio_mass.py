"""The indicator-V trick: attention on 0/1 audio values gives the explicit softmax mass."""

import pytest
import torch
import torch.nn.functional as F

from mapo_verl.core import indicator_values, mass_from_output, reduce_heads, reduce_layers


def explicit_mass(q, k, audio, causal=True):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        s = q.shape[-2]
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    probs = scores.softmax(-1)  # [b, h, S, S]
    return (probs * audio[:, None, None, :].to(probs.dtype)).sum(-1)


def test_sdpa_on_indicator_values_is_the_softmax_mass():
    torch.manual_seed(0)
    b, h, s, d = 2, 3, 7, 8
    q, k, v = (torch.randn(b, h, s, d, dtype=torch.float64) for _ in range(3))
    audio = torch.zeros(b, s, dtype=torch.bool)
    audio[0, 1:3] = True
    audio[1, 0] = True
    out = F.scaled_dot_product_attention(q, k, indicator_values(audio, v), is_causal=True)
    torch.testing.assert_close(mass_from_output(out), explicit_mass(q, k, audio), rtol=1e-12, atol=1e-12)


def test_gradients_through_q_and_k_float64():
    torch.manual_seed(1)
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    audio = torch.tensor([[1, 1, 0, 0, 0]])

    def mass(q_, k_):
        out = F.scaled_dot_product_attention(q_, k_, indicator_values(audio, q_.detach()), is_causal=True)
        return mass_from_output(out)

    assert torch.autograd.gradcheck(mass, (q, k))


def test_layouts_and_shape_checks():
    v = torch.zeros(2, 9, 4, 16)  # [batch, seq, heads, dim] (flash-attention layout)
    audio = torch.zeros(2, 9, dtype=torch.bool)
    audio[1, 4] = True
    ind = indicator_values(audio, v, seq_axis=1)
    assert ind.shape == v.shape and ind[1, 4].eq(1).all() and ind.sum() == 4 * 16
    with pytest.raises(ValueError, match="audio_key_mask has shape"):
        indicator_values(torch.zeros(2, 8), v, seq_axis=1)


def test_reductions():
    mass = torch.tensor([[[0.1, 0.2], [0.5, 0.0]]])  # [b=1, h=2, s=2]
    close = torch.testing.assert_close
    close(reduce_heads(mass, "max"), torch.tensor([[0.5, 0.2]]))
    close(reduce_heads(mass, "mean"), torch.tensor([[0.3, 0.1]]))
    layers = [torch.tensor([[0.2, 0.4]]), torch.tensor([[0.6, 0.0]])]
    close(reduce_layers(layers, "mean"), torch.tensor([[0.4, 0.2]]))
    close(reduce_layers(layers, "max"), torch.tensor([[0.6, 0.4]]))
    with pytest.raises(ValueError, match="head_reduce"):
        reduce_heads(mass, "median")
    with pytest.raises(ValueError, match="at least one layer"):
        reduce_layers([], "mean")
