"""Tiny real HF models and independent references for the attention-loss tests.

References here never call the code under test: masses come from the explicit softmax
probabilities that eager attention returns with ``output_attentions=True``.
"""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from mapo_verl.patches.audio_models import audio_family

VOCAB = 128
AUDIO_ID = 100
AUDIO_START_ID = 103
AUDIO_END_ID = 104
MEL_BINS = 16


def tiny_qwen2(attn_implementation: str = "eager", *, layers: int = 3, seed: int = 0, dtype=torch.float32):
    """A random 3-layer Qwen2 with GQA (4 query heads, 2 KV heads); audio keys are synthetic."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.set_attn_implementation(attn_implementation)
    return model


def tiny_omni_thinker(attn_implementation: str = "eager", *, seed: int = 0, dtype=torch.float32):
    """A random Qwen2.5-Omni thinker: 1-layer audio tower, tiny vision tower, 3-layer GQA text decoder."""
    torch.manual_seed(seed)
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, n_window=8, max_source_positions=64),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], patch_size=2, window_size=4, spatial_merge_size=1,
                           temporal_patch_size=1),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        audio_token_index=AUDIO_ID, image_token_index=101, video_token_index=102,
        audio_start_token_id=AUDIO_START_ID, audio_end_token_id=AUDIO_END_ID, vision_start_token_id=105,
    )
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).to(dtype)
    model.set_attn_implementation(attn_implementation)
    return model


def audio_token_count(model, feature_lengths: torch.Tensor) -> torch.Tensor:
    """Audio placeholder tokens per clip, by the model family's rule (transformers' function for the family;
    Qwen3-Omni's audio tower still carries Qwen2.5-Omni's ``_get_feat_extract_output_lengths`` method)."""
    return audio_family(model.config.model_type).output_lengths(feature_lengths)


def omni_samples(model, prompt_tail: list[list[int]], feature_lengths: list[int], *, seed: int = 1):
    """Token sequences ``[1, 2, <audio_start>, <audio>*n, <audio_end>, *tail]`` and their mel features."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(feature_lengths)
    counts = audio_token_count(model, lengths)
    max_len = max(feature_lengths)
    features = torch.randn(len(lengths), MEL_BINS, max_len, generator=generator, dtype=next(model.parameters()).dtype)
    feature_mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    sequences = [
        torch.tensor([1, 2, AUDIO_START_ID] + [AUDIO_ID] * int(n) + [AUDIO_END_ID] + tail)
        for n, tail in zip(counts, prompt_tail)
    ]
    return sequences, features, feature_mask


def right_pad(sequences: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, S]`` right-padded ids and the 0/1 attention mask (veRL's padded layout)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def explicit_audio_mass(attentions, audio_keys: torch.Tensor, layers: list[int], head_reduce: str,
                        layer_reduce: str) -> torch.Tensor:
    """``a`` ``[B, S]`` from explicit softmax probabilities ``[B, H, S, S]`` per layer."""
    per_layer = []
    for layer in layers:
        probs = attentions[layer]
        mass = (probs * audio_keys[:, None, None, :].to(probs.dtype)).sum(dim=-1)  # [B, H, S]
        per_layer.append(mass.amax(dim=1) if head_reduce == "max" else mass.mean(dim=1))
    stacked = torch.stack(per_layer)
    return stacked.mean(dim=0) if layer_reduce == "mean" else stacked.amax(dim=0)


def tiny_qwen3_omni_thinker(attn_implementation: str = "eager", *, seed: int = 0, dtype=torch.float32):
    """A random Qwen3-Omni-MoE thinker (2-layer MoE text decoder with q/k norms, 4 experts, top-2), when
    transformers has it. ``n_window=50``: the 100-frame chunks its placeholder-count rule assumes."""
    import transformers

    if not hasattr(transformers, "Qwen3OmniMoeThinkerForConditionalGeneration"):
        return None
    torch.manual_seed(seed)
    config = transformers.Qwen3OmniMoeThinkerConfig(
        audio_config=dict(num_mel_bins=MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, n_window=50, max_source_positions=64, downsample_hidden_size=8,
                          n_window_infer=100, conv_chunksize=8),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=16,
                         num_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        audio_token_id=AUDIO_ID, image_token_id=101, video_token_id=102, audio_start_token_id=AUDIO_START_ID,
        # not a field of Qwen3OmniMoeThinkerConfig: an extra key, as the released thinker_config.json carries it
        audio_end_token_id=AUDIO_END_ID, vision_start_token_id=105,
    )
    model = transformers.Qwen3OmniMoeThinkerForConditionalGeneration(config).to(dtype)
    model.set_attn_implementation(attn_implementation)
    if dtype == torch.float64:
        model.set_experts_implementation("eager")  # torch's grouped_mm (the default experts kernel) has no float64
    return model
