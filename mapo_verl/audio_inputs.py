"""What MAPO knows about audio model inputs (pure torch, no veRL import).

- the audio keys of a sample's ``multi_modal_inputs`` (what the processor returned) and of
  the model call (:data:`AUDIO_MODEL_KEYS`), and the audio placeholder token id of a model
  config (:func:`audio_token_id`);
- removing the audio for the audio-ablated pass (spec §4), :func:`ablate_audio`, per
  sample, in three modes:

- ``drop`` (the authors'): remove the audio feature keys; the audio placeholder tokens
  stay in ``input_ids`` (so response positions and rope positions stay aligned) and keep
  their plain token embeddings.
- ``zero``: keep the keys, replace the features by silence (zeros).
- ``noise``: keep the keys, replace the features by Gaussian noise with the sample's own
  feature standard deviation times ``noise_scale``.

Image and video keys are left untouched: only the audio is ablated.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = [
    "AUDIO_FEATURE_KEYS",
    "AUDIO_MASK_KEYS",
    "AUDIO_MODEL_KEYS",
    "ABLATION_MODES",
    "audio_token_id",
    "has_audio",
    "ablate_audio",
]

# Keys that carry audio signal (features) and the ones that describe it (masks, lengths).
AUDIO_FEATURE_KEYS = ("input_features",)
AUDIO_MASK_KEYS = ("feature_attention_mask", "audio_feature_lengths")
AUDIO_MODEL_KEYS = AUDIO_FEATURE_KEYS + AUDIO_MASK_KEYS
ABLATION_MODES = ("drop", "zero", "noise")


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
) -> dict[str, Any] | None:
    """A copy of ``inputs`` with the audio removed according to ``mode``.

    Samples without audio come back unchanged (``None`` stays ``None``).
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"ablation mode must be one of {list(ABLATION_MODES)}, got {mode!r}")
    if inputs is None:
        return None
    out = dict(inputs)
    if not has_audio(inputs):
        return out
    if mode == "drop":
        for key in AUDIO_FEATURE_KEYS + AUDIO_MASK_KEYS:
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
