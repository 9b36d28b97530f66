"""Tiny random audio-language models (real HF classes) with offline processors, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLING_RATE = 16000


def tone_clip(seconds: float, freq_hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def corpus() -> list[str]:
    from mapo_verl.demo.data import corpus as demo_corpus

    return demo_corpus()


def save_tiny_omni(path: Path) -> Path:
    from mapo_verl.demo.model import save_tiny_omni_thinker

    return save_tiny_omni_thinker(path, corpus())


def save_tiny_qwen2_audio(path: Path) -> Path:
    """A random ``Qwen2AudioForConditionalGeneration`` (2 s clips) with a ``Qwen2AudioProcessor``."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    from mapo_verl.demo.model import MAX_CLIP_SECONDS, build_feature_extractor, build_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus())
    processor = Qwen2AudioProcessor(feature_extractor=build_feature_extractor(), tokenizer=tokenizer)
    config = Qwen2AudioConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            # the encoder takes exactly 2 * max_source_positions mel frames: one padded clip
            "max_source_positions": 100 * MAX_CLIP_SECONDS // 2,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids(tokenizer.audio_token),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["Qwen2AudioForConditionalGeneration"],
    )
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_qwen3_omni(path: Path) -> Path:
    """A random ``Qwen3OmniMoeThinkerForConditionalGeneration`` (MoE text decoder: 4 experts, top-2) with a
    ``Qwen3OmniMoeProcessor`` built offline from the demo's tokenizer, feature extractor and image/video
    processors. ``n_window=50``: the 100-frame chunks the processor's placeholder count assumes. Weights are
    drawn with std 0.1, not transformers' 0.02: at 0.02 the audio encoder's output is its positional embedding
    after ``ln_post``, whatever the input (tone vs silence differ by ~1e-6), so no test could see the audio."""
    import torch
    from transformers import (
        Qwen3OmniMoeProcessor,
        Qwen3OmniMoeThinkerConfig,
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    from mapo_verl.demo.model import AUDIO_SPECIAL_TOKENS, build_tokenizer, omni_processor

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus())
    parts = omni_processor(tokenizer)
    processor = Qwen3OmniMoeProcessor(
        image_processor=parts.image_processor, video_processor=parts.video_processor,
        feature_extractor=parts.feature_extractor, tokenizer=tokenizer, chat_template=parts.chat_template,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in AUDIO_SPECIAL_TOKENS.items()}
    config = Qwen3OmniMoeThinkerConfig(
        audio_config={"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                      "d_model": 32, "output_dim": 64, "n_window": 50, "n_window_infer": 200,
                      "max_source_positions": 64, "downsample_hidden_size": 8, "initializer_range": 0.1},
        # patch / merge / temporal sizes as the image processor's, so image prompts line up
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                     "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
                     "max_position_embeddings": 1024, "pad_token_id": tokenizer.pad_token_id,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
        audio_token_id=ids["audio_token"], image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"], audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"], vision_end_token_id=ids["vision_eos_token"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, initializer_range=0.1,
        architectures=["Qwen3OmniMoeThinkerForConditionalGeneration"],
    )
    torch.manual_seed(0)
    Qwen3OmniMoeThinkerForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
