"""The HF auto class veRL's FSDP engine loads audio-language models with.

veRL 0.9.1's ``verl.utils.model.get_hf_auto_model_class`` picks
``AutoModelForImageTextToText`` for configs in that mapping (the Omni thinkers are), else
matches architecture suffixes (``ForCausalLM``, ...) and falls back to ``AutoModel``. For
Qwen2-Audio (``Qwen2AudioForConditionalGeneration``) that fallback is the bare
``Qwen2AudioModel`` without a language-model head, so the actor would have no logits. The
wrapper returns ``AutoModelForMultimodalLM`` (which maps every audio family here to its
``...ForConditionalGeneration`` class) for the audio families and defers otherwise.
"""

from __future__ import annotations

import functools

from mapo_verl.patches.audio_models import audio_family

__all__ = ["install"]


def _wrap(original):
    @functools.wraps(original)
    def get_hf_auto_model_class(hf_config):
        if audio_family(getattr(hf_config, "model_type", None)) is not None:
            from transformers import AutoModelForMultimodalLM

            return AutoModelForMultimodalLM
        return original(hf_config)

    return get_hf_auto_model_class


def install() -> None:
    """Patch ``verl.utils.model.get_hf_auto_model_class`` (its callers import it at call time)."""
    from mapo_verl.patches._hooks import replace_function

    replace_function("verl.utils.model", "get_hf_auto_model_class", _wrap)
