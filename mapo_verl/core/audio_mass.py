"""The audio attention mass ``a_t`` by the indicator-V trick (docs/DESIGN.md "The attention branch"), and its reductions.

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

from typing import Sequence

from mapo_verl.core.checks import as_bool_mask
from mapo_verl.core.contract import CONFIG_PREFIX, HEAD_REDUCTIONS, LAYER_REDUCTIONS

__all__ = ["indicator_values", "mass_from_output", "reduce_heads", "reduce_layers", "check_reductions",
           "resolve_layers"]

LAYERS_KEY = f"{CONFIG_PREFIX}.attention.layers"


def resolve_layers(layers: Sequence[int], num_layers: int, *, key: str = LAYERS_KEY) -> list[int]:
    """Layer indices (0-based, negative count from the end) as sorted non-negative indices.

    Raises a ``ValueError`` naming ``key`` for an index out of range or a layer given twice
    (``-1`` and ``num_layers - 1``).
    """
    resolved = []
    for index in layers:
        if not -num_layers <= index < num_layers:
            raise ValueError(f"{key}: layer {index} is out of range for a decoder with {num_layers} layers "
                             f"(allowed: {-num_layers} .. {num_layers - 1})")
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{key}: {list(layers)} names the same layer twice in a {num_layers}-layer decoder")
    return sorted(resolved)


def check_reductions(head_reduce: str | None = None, layer_reduce: str | None = None) -> None:
    """Raise a ``ValueError`` naming the choices when a given head / layer reduction is unknown."""
    if head_reduce is not None and head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"head_reduce must be one of {list(HEAD_REDUCTIONS)}, got {head_reduce!r}")
    if layer_reduce is not None and layer_reduce not in LAYER_REDUCTIONS:
        raise ValueError(f"layer_reduce must be one of {list(LAYER_REDUCTIONS)}, got {layer_reduce!r}")


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
    """Reduce per-head masses with ``max`` or ``mean`` (default: max)."""
    check_reductions(head_reduce=how)
    return mass.amax(dim=head_axis) if how == "max" else mass.mean(dim=head_axis)


def reduce_layers(per_layer: list[torch.Tensor], how: str) -> torch.Tensor:
    """Reduce the chosen layers' masses with ``mean`` or ``max`` (default: mean)."""
    check_reductions(layer_reduce=how)
    if not per_layer:
        raise ValueError("reduce_layers needs the mass of at least one layer")
    stacked = torch.stack(per_layer, dim=0)
    return stacked.mean(dim=0) if how == "mean" else stacked.amax(dim=0)
