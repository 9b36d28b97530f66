"""MAPO on megatron-core: the indicator-V audio-mass hook (docs/DESIGN.md, "Megatron").

Importing ``mapo_verl`` or this package never imports megatron-core or veRL; the names
below load their module on first access:

- :class:`AudioMassHook`, :class:`AudioMassRequest`, :class:`MAPOPackedSeqParams`,
  :func:`sum_over_pipeline` — ``mapo_verl.megatron.attention_hook`` (megatron-core only);

veRL's Megatron engine that drives the hook is :mod:`mapo_verl.verl_ext.megatron_engine`
(this package imports no veRL).

Models: megatron-core GPT language models (tested with megatron-core 0.16.1), and
Megatron-Bridge 0.5.1's ``Qwen25OmniModel``, ``Qwen3OmniModel`` and ``Qwen2AudioModel`` with
megatron-core 0.18.2 (Python 3.12), which veRL 0.9.1's Megatron engine builds through the bridge;
their language models use megatron-core ``SelfAttention`` (the Qwen2.5-Omni thinker Megatron-Bridge's
``Qwen3VLSelfAttention`` subclass) — the layer this hook wraps. :mod:`mapo_verl.megatron.models`
finds the language model inside such a chunk. The Omni thinkers take padded (BSHD) inputs only and
CP = 1. ``docs/DESIGN.md``, "Megatron", and the README's "Megatron" section give the versions and the
adaptations.
"""

from importlib import import_module

__all__ = [
    "AudioMassHook",
    "AudioMassRequest",
    "MAPOPackedSeqParams",
    "sum_over_pipeline",
]

_LOCATIONS = {
    "AudioMassHook": "mapo_verl.megatron.attention_hook",
    "AudioMassRequest": "mapo_verl.megatron.attention_hook",
    "MAPOPackedSeqParams": "mapo_verl.megatron.attention_hook",
    "sum_over_pipeline": "mapo_verl.megatron.attention_hook",
}


def __getattr__(name: str):
    if name in _LOCATIONS:
        return getattr(import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'mapo_verl.megatron' has no attribute {name!r}")
