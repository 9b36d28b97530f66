"""The audio attention mass ``a_t`` by the indicator-V trick (spec §4), and its reductions.

For query ``t`` and head ``h``, ``a_{h,t} = Σ_j p_{h,t,j} · 1[j ∈ audio]``: the output of
the *same* attention call when the values are replaced by the 0/1 audio-key indicator.
Running the layer's own kernel a second time on the same ``q, k`` (after RoPE / qk-norm)
with these values gives the mass with the kernel's masks, scale, window, GQA and exact
gradients through ``q`` and ``k`` — and never materialises the ``[b, h, S, S]`` softmax.

Backend adapters (HF attention, Megatron core attention) build the values with
:func:`indicator_values`, call their kernel, read the mass with :func:`mass_from_output`,
and reduce it with :func:`reduce_heads` / :func:`reduce_layers`.
"""

from __future__ import annotations

import torch

from mapo_verl.core.checks import as_bool_mask

__all__ = ["indicator_values", "mass_from_output", "reduce_heads", "reduce_layers", "HEAD_REDUCTIONS"]

HEAD_REDUCTIONS = ("max", "mean")


def indicator_values(audio_key_mask: torch.Tensor, value_states: torch.Tensor, *, head_dim_axis: int = -1,
                     seq_axis: int = -2, batch_axis: int = 0) -> torch.Tensor:
    """The value tensor ``1[j ∈ audio]`` broadcast to ``value_states``' shape and dtype.

    Args:
        audio_key_mask: ``[B, S_k]`` 0/1, true at audio-token keys (packed inputs use
            ``B = 1`` and the packed length).
        value_states: the layer's real value tensor; only its shape, dtype and device are
            used (any layout: say where batch, key-sequence and channel axes are).
        head_dim_axis, seq_axis, batch_axis: axes of ``value_states``.

    Returns:
        a tensor like ``value_states`` holding 1.0 at audio keys and 0.0 elsewhere, in
        every head and channel; it is a constant (no gradient flows into it).
    """
    mask = as_bool_mask(audio_key_mask, "audio_key_mask")
    ndim = value_states.dim()
    batch_axis, seq_axis, head_dim_axis = (a % ndim for a in (batch_axis, seq_axis, head_dim_axis))
    if mask.shape != (value_states.shape[batch_axis], value_states.shape[seq_axis]):
        raise ValueError(
            f"audio_key_mask has shape {tuple(mask.shape)}, expected "
            f"({value_states.shape[batch_axis]}, {value_states.shape[seq_axis]}) (batch, keys) of the value states"
        )
    view = [1] * ndim
    view[batch_axis] = mask.shape[0]
    view[seq_axis] = mask.shape[1]
    # Order the mask's two axes as they appear in value_states before reshaping.
    ordered = mask if batch_axis < seq_axis else mask.transpose(0, 1)
    ones = ordered.to(dtype=value_states.dtype, device=value_states.device).reshape(view)
    return ones.expand_as(value_states)


def mass_from_output(indicator_output: torch.Tensor, *, head_dim_axis: int = -1) -> torch.Tensor:
    """The mass per query and head: channel 0 of the attention output on indicator values.

    Every channel of that output holds the same number (all value channels are equal), so
    one channel is read; the others cost nothing extra in the kernel's backward.
    """
    return indicator_output.select(head_dim_axis, 0)


def reduce_heads(mass: torch.Tensor, how: str, *, head_axis: int = 1) -> torch.Tensor:
    """Reduce per-head masses with ``max`` or ``mean`` (spec §3 default: max)."""
    if how == "max":
        return mass.amax(dim=head_axis)
    if how == "mean":
        return mass.mean(dim=head_axis)
    raise ValueError(f"head_reduce must be one of {list(HEAD_REDUCTIONS)}, got {how!r}")


def reduce_layers(per_layer: list[torch.Tensor], how: str) -> torch.Tensor:
    """Reduce the chosen layers' masses with ``mean`` or ``max`` (spec §3 default: mean)."""
    if not per_layer:
        raise ValueError("reduce_layers needs the mass of at least one layer")
    stacked = torch.stack(per_layer, dim=0)
    if how == "mean":
        return stacked.mean(dim=0)
    if how == "max":
        return stacked.amax(dim=0)
    raise ValueError(f"layer_reduce must be one of ['mean', 'max'], got {how!r}")
