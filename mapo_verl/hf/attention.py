"""The audio mass ``a_{h,t}`` through transformers' own attention implementation (docs/DESIGN.md "The attention branch").

transformers (5.x) attention modules do RoPE / qk-norm themselves, then call

    attention_interface(module, query, key, value, attention_mask, dropout=..., scaling=...,
                        sliding_window=..., **kwargs)

where ``attention_interface`` comes from ``ALL_ATTENTION_FUNCTIONS.get_interface(
config._attn_implementation, eager_attention_forward)``: eager, sdpa, flash_attention_2/3,
flex, or a kernel registered by veRL. That call is the one place that sees ``q`` and ``k``
after every position transform, together with the mask (padding, packed sequences, sliding
window), the scale, GQA and the varlen metadata (``position_ids``, ``cu_seq_lens_*``).

:func:`indicator_v_mass` calls the same function a second time with the values replaced by
the 0/1 audio-key indicator (:func:`mapo_verl.core.indicator_values`): channel 0 of the
output is the attention mass on audio keys, per query and head, with the kernel's exact
gradients into ``q`` and ``k`` and no ``[b, h, S, S]`` tensor beyond what the kernel itself
allocates (eager materialises its softmax for the model's own call too; sdpa and flash
do not).

:func:`attention_interface_hook` wraps ``get_interface`` so that every attention call of a
*registered* module also computes that mass and hands it to a callback. Modules that are
not registered (the audio / vision towers, a colocated reference model) pass straight
through.
"""

from __future__ import annotations

import functools
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

import torch

from mapo_verl.core import indicator_values, mass_from_output, reduce_heads

__all__ = ["MassReceiver", "indicator_v_mass", "attention_interface_hook"]


class MassReceiver(Protocol):
    """What a registered attention module reports to (see :func:`attention_interface_hook`)."""

    def on_attention(self, module: torch.nn.Module, attention_fn: Callable, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None, args: tuple, kwargs: dict) -> None:
        ...


def indicator_v_mass(
    attention_fn: Callable,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    audio_key_mask: torch.Tensor,
    *args,
    head_reduce: str = "max",
    **kwargs,
) -> torch.Tensor:
    """Audio attention mass of every query, reduced over heads: ``[batch, query_len]``, at least float32.

    Args:
        attention_fn: a transformers attention-interface function (as returned by
            ``ALL_ATTENTION_FUNCTIONS.get_interface``).
        module, query, key, value, attention_mask, args, kwargs: exactly the arguments the
            attention module passed to ``attention_fn`` (``query`` ``[b, h, S, d]``, ``key`` /
            ``value`` ``[b, h_kv, S, d]``); ``value`` only gives the shape and dtype.
        audio_key_mask: ``[b, S]`` 0/1, true at audio-token keys, in the model's input layout
            (``b = 1`` and the packed length for packed inputs).
        head_reduce: ``max`` or ``mean`` over the query heads (default: max).

    Raises:
        ValueError: a non-zero attention dropout (the mass would be a random quantity), an
            audio mask that does not match the key layout, or an attention function whose
            output is not ``[b, S, h, d]``.
    """
    dropout = kwargs.get("dropout", 0.0)
    if dropout:
        raise ValueError(
            f"the audio-mass call needs attention dropout 0, but {type(module).__name__} "
            f"(layer {getattr(module, 'layer_idx', '?')}) runs with dropout={dropout}: set the model config's "
            "attention_dropout to 0 for MAPO's attention loss"
        )
    try:
        indicator = indicator_values(audio_key_mask, value, head_dim_axis=-1, seq_axis=-2, batch_axis=0)
    except ValueError as err:
        raise ValueError(
            f"{err} in {type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}): the audio-key mask must "
            "follow the token layout the decoder sees (one key per input_ids position; models that expand "
            "audio placeholders inside forward, e.g. Qwen2-Audio's legacy single-token prompts, are not supported)"
        ) from None
    # Kernels such as flash-attn require a dense last dimension; the copy costs one V-sized tensor.
    output = attention_fn(module, query, key, indicator.contiguous(), attention_mask, *args, **kwargs)[0]
    batch, heads, length = query.shape[0], query.shape[1], query.shape[2]
    if output.dim() != 4 or tuple(output.shape[:3]) != (batch, length, heads):
        raise ValueError(
            f"attention function {getattr(attention_fn, '__name__', attention_fn)!r} returned shape "
            f"{tuple(output.shape)}; expected [batch={batch}, seq={length}, heads={heads}, head_dim]"
        )
    mass = mass_from_output(output)
    # bf16/fp16 kernels: reduce and hand on in float32 (float64 stays float64).
    return reduce_heads(mass.to(torch.promote_types(mass.dtype, torch.float32)), head_reduce, head_axis=-1)


# --- the get_interface wrapper -------------------------------------------------------------

_lock = threading.Lock()
_receivers: weakref.WeakKeyDictionary[torch.nn.Module, MassReceiver] = weakref.WeakKeyDictionary()
_install_depth = 0
_saved_get_interface: dict[str, Callable] = {}
_wrapped_functions: dict[Callable, Callable] = {}


def _with_mass(attention_fn: Callable) -> Callable:
    """``attention_fn`` followed, for registered modules under autograd, by the receiver's call."""
    wrapped = _wrapped_functions.get(attention_fn)
    if wrapped is not None:
        return wrapped

    @functools.wraps(attention_fn)
    def attention_then_audio_mass(module, query, key, value, attention_mask, *args, **kwargs):
        output = attention_fn(module, query, key, value, attention_mask, *args, **kwargs)
        receiver = _receivers.get(module)
        # No-grad passes (log-prob, reference, rollout) never pay for the mass.
        if receiver is not None and torch.is_grad_enabled():
            receiver.on_attention(module, attention_fn, query, key, value, attention_mask, args, kwargs)
        return output

    _wrapped_functions[attention_fn] = attention_then_audio_mass
    return attention_then_audio_mass


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


@contextmanager
def attention_interface_hook(receivers: dict[torch.nn.Module, MassReceiver]) -> Iterator[None]:
    """Route the attention calls of ``receivers``' modules through their receivers.

    While at least one such context is open, ``ALL_ATTENTION_FUNCTIONS.get_interface`` returns
    wrapped functions; on the last exit the original lookup is restored exactly. A module can
    be registered by one open context at a time.
    """
    global _install_depth
    functions = _attention_functions()
    with _lock:
        taken = [m for m in receivers if m in _receivers]
        if taken:
            raise RuntimeError(f"{len(taken)} attention module(s) already carry an audio-mass hook "
                               f"(e.g. {type(taken[0]).__name__}); close the other probe first")
        if _install_depth == 0:
            if "get_interface" in vars(functions):  # someone else's instance-level override: keep it
                _saved_get_interface["instance"] = vars(functions)["get_interface"]
            original = functions.get_interface

            def get_interface(attn_implementation, default):
                return _with_mass(original(attn_implementation, default))

            functions.get_interface = get_interface
        _install_depth += 1
        _receivers.update(receivers)
    try:
        yield
    finally:
        with _lock:
            for module in receivers:
                _receivers.pop(module, None)
            _install_depth -= 1
            if _install_depth == 0:
                del functions.get_interface
                if "instance" in _saved_get_interface:
                    functions.get_interface = _saved_get_interface.pop("instance")
                _wrapped_functions.clear()
