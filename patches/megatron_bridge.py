"""Megatron-Bridge's audio and vision models as veRL's Megatron engine drives them (Megatron-Bridge 0.5.1, veRL 0.9.1).

Four adaptations, each a fix that can be proposed upstream on its own (``docs/UPSTREAM.md``):

- **Stage flags.** veRL's ``model_forward`` reads ``unwrap_model(model).pre_process`` on the
  first forward; Megatron-Bridge's ``Qwen25OmniModel`` keeps the flag on its thinker only
  (``AttributeError``). ``make_megatron_module`` is wrapped so every chunk it returns carries
  the flags of its language model (:func:`mapo_verl.megatron.models.expose_stage_flags`).
- **Multimodal detection.** veRL treats a model as vision-language when its HF config has
  ``vision_config``: it then builds the [B, S] attention mask and leaves the (3-D mRoPE)
  position ids to the model. The Omni configs keep ``vision_config`` inside ``thinker_config``,
  so veRL would hand the Omni thinkers 1-D position ids. The engine's forward function is
  called with ``vision_model=True`` for such configs (:func:`computes_own_positions`).
- **Qwen3-Omni audio features.** ``Qwen3OmniThinkerModel.get_audio_features`` cuts the
  encoder output per clip with ``audio_model._get_feat_extract_output_lengths``, which for
  the Qwen3-Omni encoder is an inherited Whisper rule, not the encoder's (transformers'
  module-level ``_get_feat_extract_output_lengths``): with two or more clips in a micro-batch
  the cut lands in the wrong rows (a mismatch error, or another clip's features). The cut is
  redone with the encoder's own rule.
- **Qwen2.5-VL mRoPE sections.** The Qwen2.5-VL bridge keeps the provider's default
  ``mrope_section`` ([16, 24, 24], for head_dim 128) whatever the checkpoint's config says: a
  checkpoint with other sections fails at the first forward (other head_dim) or rotates with the
  wrong sections (same head_dim). The provider takes the checkpoint's sections.

Applied by :func:`install` when the pinned Megatron-Bridge is the installed one; with any
other version nothing is patched and a warning says so.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata

__all__ = ["TESTED_MEGATRON_BRIDGE_VERSION", "computes_own_positions", "install"]

TESTED_MEGATRON_BRIDGE_VERSION = "0.5.1"
_QWEN3_OMNI_THINKER = "megatron.bridge.models.qwen_omni.modeling_qwen3_omni.thinker_model"
_QWEN25_VL_BRIDGE = "megatron.bridge.models.qwen_vl.qwen25_vl_bridge"
logger = logging.getLogger(__name__)


def computes_own_positions(hf_config) -> bool:
    """Whether the model builds its multimodal position ids itself (vision-language or Omni config)."""
    return hasattr(hf_config, "vision_config") or hasattr(hf_config, "thinker_config")


def _expose_flags_of_built_chunks(original):
    @functools.wraps(original)
    def make_megatron_module(*args, **kwargs):
        from verl.utils.megatron_utils import unwrap_model

        from mapo_verl.megatron.models import expose_stage_flags

        module, tf_config = original(*args, **kwargs)
        for chunk in module:
            expose_stage_flags(unwrap_model(chunk))
        return module, tf_config

    return make_megatron_module


def _omni_as_multimodal(original):
    @functools.wraps(original)
    def get_mcore_engine_forward_fn(hf_config):
        forward_fn = original(hf_config)
        if hasattr(hf_config, "vision_config") or not computes_own_positions(hf_config):
            return forward_fn

        @functools.wraps(forward_fn)
        def forward(*args, vision_model=False, **kwargs):
            return forward_fn(*args, vision_model=True, **kwargs)

        return forward

    return get_mcore_engine_forward_fn


def qwen3_omni_audio_features(original):
    """``get_audio_features`` of the Qwen3-Omni thinker, cutting clips with the encoder's own length rule."""

    @functools.wraps(original)
    def get_audio_features(self, input_features, feature_attention_mask=None, audio_feature_lengths=None,
                           expected_audio_token_counts=None):
        import torch
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        embeds = original(self, input_features, feature_attention_mask=feature_attention_mask,
                          audio_feature_lengths=audio_feature_lengths)
        if expected_audio_token_counts is None:
            return embeds
        if feature_attention_mask is not None:
            audio_feature_lengths = feature_attention_mask.sum(dim=1)
        produced = _get_feat_extract_output_lengths(audio_feature_lengths).tolist()
        expected = expected_audio_token_counts.tolist()
        if len(produced) != len(expected):  # several clips in one row: nothing to cut per row
            return embeds
        pieces, start = [], 0
        for produced_len, expected_len in zip(produced, expected):
            if expected_len > produced_len:
                raise ValueError(f"Audio token placeholders exceed produced audio features: expected={expected_len}, "
                                 f"produced={produced_len}")
            pieces.append(embeds[start:start + expected_len])
            start += produced_len
        return torch.cat(pieces) if pieces else embeds[:0]

    return get_audio_features


def _wrap_method(cls: type, name: str, wrap) -> None:
    """``cls.<name>`` becomes ``wrap(original)``, which keeps the original as ``__mapo_original__`` (once)."""
    original = getattr(cls, name)
    if not hasattr(original, "__mapo_original__"):
        patched = wrap(original)
        patched.__mapo_original__ = original
        setattr(cls, name, patched)


def _patch_qwen3_omni_thinker(module) -> None:
    _wrap_method(module.Qwen3OmniThinkerModel, "get_audio_features", qwen3_omni_audio_features)


def hf_mrope_section(text_config) -> list[int] | None:
    """The mRoPE sections of an HF text config (``rope_parameters`` in transformers 5, ``rope_scaling`` in
    released config files), or None."""
    for attr in ("rope_parameters", "rope_scaling"):
        rope = getattr(text_config, attr, None)
        if isinstance(rope, dict) and rope.get("mrope_section"):
            return [int(size) for size in rope["mrope_section"]]
    return None


def qwen25_vl_sections_from_checkpoint(original):
    @functools.wraps(original)
    def provider_bridge(self, hf_pretrained):
        provider = original(self, hf_pretrained)
        section = hf_mrope_section(hf_pretrained.config.text_config)
        if section is not None:
            provider.mrope_section = section
        return provider

    return provider_bridge


def _patch_qwen25_vl_bridge(module) -> None:
    _wrap_method(module.Qwen25VLBridge, "provider_bridge", qwen25_vl_sections_from_checkpoint)


def install() -> bool:
    """Install the four adaptations (idempotent); False, with a warning, on an untested Megatron-Bridge."""
    from mapo_verl.patches._hooks import replace_function, when_imported

    try:
        version = metadata.version("megatron-bridge")
    except metadata.PackageNotFoundError:
        return False
    if version != TESTED_MEGATRON_BRIDGE_VERSION:
        logger.warning("megatron-bridge %s is installed; mapo_verl's Megatron-Bridge adaptations are written for "
                       "%s and were not applied", version, TESTED_MEGATRON_BRIDGE_VERSION)
        return False
    replace_function("verl.utils.megatron_utils", "make_megatron_module", _expose_flags_of_built_chunks)
    replace_function("verl.models.mcore.registry", "get_mcore_engine_forward_fn", _omni_as_multimodal,
                     importers=("verl.models.mcore",))
    when_imported(_QWEN3_OMNI_THINKER, _patch_qwen3_omni_thinker)
    when_imported(_QWEN25_VL_BRIDGE, _patch_qwen25_vl_bridge)
    return True
