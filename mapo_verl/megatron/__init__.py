"""MAPO on megatron-core: the indicator-V audio-mass hook and veRL's Megatron engine (spec §4).

Importing ``mapo_verl`` or this package never imports megatron-core or veRL; the names
below load their module on first access:

- :class:`AudioMassHook`, :class:`AudioMassRequest`, :class:`MAPOPackedSeqParams`,
  :func:`sum_over_pipeline` — ``mapo_verl.megatron.attention_hook`` (megatron-core only);

veRL's Megatron engine that drives the hook is :mod:`mapo_verl.verl_ext.megatron_engine`
(this package imports no veRL).

Megatron model paths for the audio models. veRL 0.9.1's Megatron engine builds models
through a bridge. ``mbridge`` (veRL's ``mcore`` extra; 0.15.1) has no Qwen2-Audio nor
Qwen2.5-Omni model. Megatron-Bridge (``megatron-bridge`` ≥ 0.6, Python ≥ 3.12, with the
megatron-core it pins) ships Qwen2.5-Omni-thinker, Qwen3-Omni and Qwen2-Audio providers
whose language models use megatron-core ``SelfAttention`` — the layer this hook wraps —
and take ``input_features`` / ``feature_attention_mask`` (the Omni thinker also
``audio_feature_lengths``), which :class:`MAPOMegatronEngine` passes. That is the
supported path; its Omni thinker refuses packed (THD) inputs, so run it with
``use_remove_padding=False`` and CP = 1. Neither bridge installs on the CPU test machine
(Python 3.11, megatron-core 0.16.1): the CPU tests drive a megatron-core ``GPTModel`` with
the local (unfused) layer spec.
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
