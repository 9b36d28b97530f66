"""What veRL needs to know about the audio-language models MAPO trains.

Qwen2.5-Omni thinker, Qwen2-Audio and (where the installed transformers has it) the
Qwen3-Omni thinker all put one placeholder token per audio frame *after* the audio
encoder into ``input_ids``, and take ``input_features`` / ``feature_attention_mask`` as the
features those placeholders are replaced with. This module holds, per model type, the
encoder-output-length rule (transformers' own function, not a re-derivation), computes
the audio processor inputs for a list of clips, and checks placeholder counts against the
features: the Omni thinkers do not check at all, Qwen2-Audio only checks the batch total,
so a mismatch would otherwise scatter one sample's audio into another sample's tokens or
fail deep inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mapo_verl.modalities import AUDIO_FEATURE_KEYS

__all__ = [
    "PROCESSOR_AUDIO_KEYS",
    "AudioModelFamily",
    "AudioPlaceholderMismatchError",
    "audio_family",
    "audio_family_for_processor",
    "audio_processor_inputs",
    "check_audio_placeholders",
]

# The keys an audio processor returns into veRL's multi_modal_inputs (both padded as varlen keys by veRL).
PROCESSOR_AUDIO_KEYS = AUDIO_FEATURE_KEYS + ("feature_attention_mask",)


class AudioPlaceholderMismatchError(ValueError):
    """A sample's audio placeholder tokens do not match its audio features."""


@dataclass(frozen=True)
class AudioModelFamily:
    """An audio-language model family as veRL's data path sees it.

    ``output_lengths`` maps the number of valid feature frames of each clip to the number of
    placeholder tokens the model's audio encoder fills. ``thinker_class`` is the model class
    whose ``get_rope_index`` gives the multimodal RoPE positions (None: 1-D positions).
    """

    model_types: tuple[str, ...]
    processor_class: str
    output_lengths: Callable[[torch.Tensor], torch.Tensor]
    thinker_class: Callable[[], type] | None = None


def _qwen2_5_omni_lengths(frames: torch.Tensor) -> torch.Tensor:
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    # an instance method that reads nothing from the instance
    return Qwen2_5OmniAudioEncoder._get_feat_extract_output_lengths(None, frames)[1]


def _qwen2_audio_lengths(frames: torch.Tensor) -> torch.Tensor:
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    return Qwen2AudioEncoder._get_feat_extract_output_lengths(None, frames)[1]


def _qwen3_omni_lengths(frames: torch.Tensor) -> torch.Tensor:
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    return _get_feat_extract_output_lengths(frames)


def _qwen2_5_omni_thinker():
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration


def _qwen3_omni_thinker():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerForConditionalGeneration

    return Qwen3OmniMoeThinkerForConditionalGeneration


def _has_qwen3_omni() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers.models.qwen3_omni_moe") is not None


_FAMILIES = [
    # the thinker alone, or the full Omni checkpoint (Megatron-Bridge's bridges take only that)
    AudioModelFamily(("qwen2_5_omni_thinker", "qwen2_5_omni"), "Qwen2_5OmniProcessor", _qwen2_5_omni_lengths,
                     _qwen2_5_omni_thinker),
    AudioModelFamily(("qwen2_audio",), "Qwen2AudioProcessor", _qwen2_audio_lengths),
]
if _has_qwen3_omni():
    _FAMILIES.append(
        AudioModelFamily(("qwen3_omni_moe_thinker", "qwen3_omni_moe"), "Qwen3OmniMoeProcessor", _qwen3_omni_lengths,
                         _qwen3_omni_thinker)
    )


def audio_family(model_type: str | None) -> AudioModelFamily | None:
    """The family of an HF ``config.model_type``, or None for a model this module does not cover."""
    for family in _FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def audio_family_for_processor(processor: Any) -> AudioModelFamily | None:
    """The family of a loaded processor (by its config when attached, else by its class)."""
    if processor is None:
        return None
    config = getattr(processor, "config", None)
    family = audio_family(getattr(config, "model_type", None))
    if family is not None:
        return family
    name = type(processor).__name__
    return next((f for f in _FAMILIES if f.processor_class == name), None)


def audio_processor_inputs(processor: Any, audios: Sequence[Any], mm_processor_kwargs: dict | None = None) -> dict:
    """``input_features`` and ``feature_attention_mask`` of ``audios``, as the processor makes them.

    The processor is run on a text holding exactly one audio token per clip, so the result
    is what it produces for a real prompt, without re-parsing a decoded prompt (Qwen2-Audio's
    processor rejects a text whose audio tokens were dropped by ``skip_special_tokens``).
    """
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    outputs = build_multimodal_processor_inputs(
        processor,
        text=[processor.audio_token * len(audios)],
        audio=list(audios),
        mm_processor_kwargs=mm_processor_kwargs,
    )
    missing = [key for key in PROCESSOR_AUDIO_KEYS if key not in outputs]
    if missing:
        raise ValueError(f"{type(processor).__name__} returned no {missing} for {len(audios)} audio clip(s)")
    return {key: torch.as_tensor(outputs[key]) for key in PROCESSOR_AUDIO_KEYS}


def check_audio_placeholders(
    input_ids: torch.Tensor | Sequence[int],
    feature_attention_mask: torch.Tensor,
    *,
    audio_token_id: int,
    family: AudioModelFamily,
    sample: str,
    response_ids: torch.Tensor | Sequence[int] | None = None,
) -> None:
    """Raise :class:`AudioPlaceholderMismatchError` naming ``sample`` unless the counts agree.

    ``input_ids`` is one sample's token ids (padding allowed: it never equals the audio
    token); ``feature_attention_mask`` is [num_clips, frames] for that sample's clips.
    ``response_ids``, when given, is the generated part of ``input_ids``: a placeholder
    there is reported as such (the model would fill it with audio features).
    """
    ids = torch.as_tensor(input_ids).reshape(-1)
    mask = torch.as_tensor(feature_attention_mask)
    if mask.dim() != 2:
        raise ValueError(f"{sample}: feature_attention_mask must be [num_clips, frames], got {tuple(mask.shape)}")
    expected = family.output_lengths(mask.sum(-1).long())
    n_placeholders = int((ids == audio_token_id).sum())
    n_features = int(expected.sum())
    n_generated = 0 if response_ids is None else int((torch.as_tensor(response_ids) == audio_token_id).sum())
    if n_generated:
        raise AudioPlaceholderMismatchError(
            f"{sample}: the response contains {n_generated} audio placeholder tokens (id {audio_token_id}); "
            "the model would fill them with audio features when training on it, so the rollout must not "
            "sample placeholder tokens"
        )
    if n_placeholders != n_features:
        raise AudioPlaceholderMismatchError(
            f"{sample}: {n_placeholders} audio placeholder tokens (id {audio_token_id}) in input_ids, but its "
            f"{mask.shape[0]} audio clip(s) give {n_features} audio features (per clip: {expected.tolist()}); "
            "the prompt and the audio were not processed together, or the prompt was truncated"
        )
