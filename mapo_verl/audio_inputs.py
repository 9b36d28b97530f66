"""What MAPO knows about audio model inputs (pure torch, no veRL import).

- the audio keys of a sample's ``multi_modal_inputs`` (what the processor returned) and of
  the model call (:data:`AUDIO_MODEL_KEYS`), the audio placeholder token id of a model
  config (:func:`audio_token_id`) and the ids of the tokens the attention loss counts as
  audio keys (:func:`audio_key_token_ids`: the placeholders, and by default the audio
  start/end markers, as the authors' release);
- removing the audio for the audio-ablated pass (docs/DESIGN.md, "Step order"), :func:`ablate_audio`, per
  sample, in three modes:

- ``drop`` (the authors'): remove the audio features (``input_features``); the audio
  placeholder tokens stay in ``input_ids`` and keep their plain token embeddings, and the
  clip lengths (``feature_attention_mask`` / ``audio_feature_lengths``) stay, so response
  positions and rope positions stay aligned whether the positions come with the batch or
  the model computes them (the Omni thinkers on Megatron-Bridge).
- ``zero``: keep the keys, replace the features by silence (zeros).
- ``noise``: keep the keys, replace the features by Gaussian noise with the sample's own
  feature standard deviation times ``noise_scale``.

With ``scope="audio"`` (the authors' default) image and video keys are left untouched; with
``scope="all"`` the image and video features of a sample with audio are dropped too
(:data:`VISION_FEATURE_KEYS`; their grids stay, for the same position alignment).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from mapo_verl.core.contract import ABLATION_MODES, MODALITY_SCOPES

__all__ = [
    "AUDIO_FEATURE_KEYS",
    "AUDIO_MASK_KEYS",
    "AUDIO_MODEL_KEYS",
    "VISION_FEATURE_KEYS",
    "audio_token_id",
    "audio_key_token_ids",
    "audio_key_mask",
    "has_audio",
    "ablate_audio",
]

# Keys that carry audio signal (features) and the ones that describe it (masks, lengths).
AUDIO_FEATURE_KEYS = ("input_features",)
AUDIO_MASK_KEYS = ("feature_attention_mask", "audio_feature_lengths")
AUDIO_MODEL_KEYS = AUDIO_FEATURE_KEYS + AUDIO_MASK_KEYS
# Image / video features of Qwen2.5-Omni / Qwen3-Omni processors, dropped by the ablation with scope "all"
# (image_grid_thw / video_grid_thw stay: the rope index reads them).
VISION_FEATURE_KEYS = ("pixel_values", "pixel_values_videos")
# Audio start / end marker ids of Omni configs (Qwen2.5-Omni: <|audio_bos|>/<|audio_eos|>, Qwen3-Omni:
# <|audio_start|>/<|audio_end|>): the release counts them as audio keys.
_AUDIO_MARKER_ATTRS = ("audio_start_token_id", "audio_end_token_id")


def audio_token_id(config_or_model) -> int:
    """The audio placeholder id of an HF config or model (``audio_token_id`` / ``audio_token_index``,
    at the top level or in an Omni ``thinker_config``)."""
    config = getattr(config_or_model, "config", config_or_model)
    for source in (config, getattr(config, "thinker_config", None)):
        for name in ("audio_token_id", "audio_token_index"):
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    raise ValueError(f"{type(config_or_model).__name__} has no audio_token_id / audio_token_index (nor in "
                     "thinker_config): MAPO's attention loss needs the audio placeholder id to find audio keys")


def audio_key_token_ids(config_or_model, include_markers: bool = True) -> tuple[int, ...]:
    """The token ids whose keys the attention loss counts as audio: the placeholder, and with
    ``include_markers`` the audio start/end markers the config names (none for Qwen2-Audio)."""
    ids = [audio_token_id(config_or_model)]
    if include_markers:
        config = getattr(config_or_model, "config", config_or_model)
        for source in (config, getattr(config, "thinker_config", None)):
            for name in _AUDIO_MARKER_ATTRS:
                value = getattr(source, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value not in ids:
                    ids.append(value)
    return tuple(ids)


def audio_key_mask(input_ids: torch.Tensor, audio_ids: tuple[int, ...]) -> torch.Tensor:
    """bool, shaped like ``input_ids``: positions holding one of ``audio_ids``."""
    return torch.isin(input_ids, torch.tensor(audio_ids, dtype=input_ids.dtype, device=input_ids.device))


def has_audio(inputs: Mapping[str, Any] | None) -> bool:
    """Whether a sample's multimodal inputs hold non-empty audio features."""
    if not inputs:
        return False
    features = inputs.get("input_features")
    return isinstance(features, torch.Tensor) and features.numel() > 0


def ablate_audio(
    inputs: Mapping[str, Any] | None,
    mode: str,
    *,
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    scope: str = "audio",
) -> dict[str, Any] | None:
    """A copy of ``inputs`` with the audio removed according to ``mode`` (and, with
    ``scope="all"``, the image / video inputs dropped too).

    Samples without audio come back unchanged (``None`` stays ``None``).
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"ablation mode must be one of {list(ABLATION_MODES)}, got {mode!r}")
    if scope not in MODALITY_SCOPES:
        raise ValueError(f"text_only_modality_scope must be one of {list(MODALITY_SCOPES)}, got {scope!r}")
    if inputs is None:
        return None
    out = dict(inputs)
    if not has_audio(inputs):
        return out
    if scope == "all":
        for key in VISION_FEATURE_KEYS:
            out.pop(key, None)
    if mode == "drop":
        # the masks / lengths stay: models that build their rope index themselves (the Omni thinkers on
        # Megatron-Bridge) read the clip lengths for the positions of the placeholders
        for key in AUDIO_FEATURE_KEYS:
            out.pop(key, None)
        return out
    for key in AUDIO_FEATURE_KEYS:
        features = inputs.get(key)
        if not isinstance(features, torch.Tensor):
            continue
        if mode == "zero":
            out[key] = torch.zeros_like(features)
        else:
            scale = features.float().std().nan_to_num(0.0) * noise_scale
            noise = torch.randn(features.shape, generator=generator, dtype=torch.float32, device="cpu")
            out[key] = (noise.to(features.device) * scale.to(features.device)).to(features.dtype)
    return out
