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
