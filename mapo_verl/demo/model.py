"""A tiny random Qwen2.5-Omni thinker with an offline-built tokenizer and processor (CPU-only tests and dry runs).

Built from nothing (no hub access): a byte-level BPE tokenizer trained on the demo's own
question/answer vocabulary, a Whisper feature extractor sized for short clips, a
``Qwen2_5OmniProcessor`` and a randomly initialised
``Qwen2_5OmniThinkerForConditionalGeneration`` small enough that a GRPO step on two CPU
cores takes seconds. The weights are random: the demo exercises the training stack
(audio features → placeholders → policy update → rollout weight sync), not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "AUDIO_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "SAMPLING_RATE",
    "MAX_CLIP_SECONDS",
    "build_tokenizer",
    "build_feature_extractor",
    "save_model_files",
    "save_tiny_omni",
    "save_tiny_omni_thinker",
]

SAMPLING_RATE = 16000
# Longest clip the feature extractor accepts: the processors pad every clip to this length
# and mask the padding (``feature_attention_mask``).
MAX_CLIP_SECONDS = 2

# Qwen2.5-Omni's special tokens, by the tokenizer attribute that names each one.
AUDIO_SPECIAL_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
_PAD, _IM_START, _IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, with an audio item rendered the way Qwen2.5-Omni's template renders it.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: list[str], vocab_size: int = 384, special_tokens: dict[str, str] | None = None,
                    chat_template: str = CHAT_TEMPLATE):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers.

    Byte-level pre-tokenisation makes every string encodable; the special tokens take the
    first ids. Returns a ``PreTrainedTokenizerFast`` whose ``audio_token`` etc. (``special_tokens``,
    default :data:`AUDIO_SPECIAL_TOKENS`) are set: the processors read them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = AUDIO_SPECIAL_TOKENS if special_tokens is None else special_tokens
    specials = [_PAD, _IM_START, _IM_END, *special_tokens.values()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=_IM_END,
        pad_token=_PAD,
        extra_special_tokens=dict(special_tokens),
        chat_template=chat_template,
    )


def build_feature_extractor(clip_seconds: int = MAX_CLIP_SECONDS):
    """Whisper log-mel features (128 bins, as Qwen2.5-Omni) for clips up to ``clip_seconds``."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        chunk_length=clip_seconds,
        return_attention_mask=True,
    )


def omni_processor(tokenizer, clip_seconds: int = MAX_CLIP_SECONDS):
    from transformers import Qwen2_5OmniProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_processing_utils import BaseVideoProcessor

    from mapo_verl.patches.processors import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
        # The demo has no video; a generic video processor keeps the processor loadable where
        # torchvision (which Qwen2-VL's video processor needs) is not installed.
        video_processor=BaseVideoProcessor(merge_size=2, patch_size=14, temporal_patch_size=2),
        feature_extractor=build_feature_extractor(clip_seconds),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def thinker_config(tokenizer, scale: int = 1, audio_layers: int | None = None, audio_width: int | None = None):
    """The demo thinker's config; ``scale`` multiplies widths and depths (benchmarks use > 1);
    ``audio_layers`` / ``audio_width`` set the audio encoder's depth and ``d_model`` instead."""
    from transformers import Qwen2_5OmniThinkerConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in AUDIO_SPECIAL_TOKENS.items()}
    vocab_size = len(tokenizer)
    hidden, heads = 64 * scale, 4
    head_dim = hidden // heads
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128 * scale,
        "num_hidden_layers": 2 * scale,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        # multimodal RoPE: temporal/height/width sections must sum to head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                            "mrope_section": [2 * scale, 3 * scale, 3 * scale]},
        "tie_word_embeddings": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    assert sum(text_config["rope_parameters"]["mrope_section"]) == head_dim // 2
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": audio_layers or scale,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 2 * (audio_width or 32 * scale),
            "d_model": audio_width or 32 * scale,
            # positions after the stride-2 conv of one 2*n_window-frame chunk
            "max_source_positions": 50,
            "n_window": 50,
            "output_dim": hidden,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        text_config=text_config,
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        user_token_id=tokenizer.convert_tokens_to_ids("user") if "user" in tokenizer.get_vocab() else 0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        architectures=["Qwen2_5OmniThinkerForConditionalGeneration"],
    )


def save_model_files(path: str | Path, tokenizer, processor, seed: int, build_model) -> Path:
    """Write ``build_model()`` (seeded with ``seed``, fp32) with ``tokenizer``'s generation config and ``processor``."""
    import torch
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model().to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "mapo_demo.json").write_text(json.dumps({"seed": seed, "parameters": model.num_parameters()}))
    return path


def _save_tiny_model(path: str | Path, corpus: list[str], seed: int, clip_seconds: int, build_model) -> Path:
    """Write ``build_model(tokenizer)`` with the demo tokenizer and Omni processor."""
    tokenizer = build_tokenizer(corpus)
    return save_model_files(path, tokenizer, omni_processor(tokenizer, clip_seconds), seed,
                             lambda: build_model(tokenizer))


def save_tiny_omni_thinker(path: str | Path, corpus: list[str], seed: int = 0, clip_seconds: int = MAX_CLIP_SECONDS,
                           **config_kwargs) -> Path:
    """Write a tiny random Qwen2.5-Omni thinker with tokenizer and processor to ``path``
    (``config_kwargs`` go to :func:`thinker_config`)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return _save_tiny_model(path, corpus, seed, clip_seconds, lambda tokenizer: (
        Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(tokenizer, **config_kwargs))))


def save_tiny_omni(path: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """Write the demo thinker's configuration as a full ``Qwen2_5OmniForConditionalGeneration`` checkpoint
    (no talker: ``enable_audio_output=False``; weights ``thinker.*``), with tokenizer and processor, to ``path``.

    Megatron-Bridge registers its Qwen2.5-Omni bridge for the full model class, so the Megatron
    dry run (``recipes/mapo_tiny_cpu_megatron.yaml``) starts from this checkpoint.
    """
    import torch
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    path = _save_tiny_model(path, corpus, seed, MAX_CLIP_SECONDS, lambda tokenizer: Qwen2_5OmniForConditionalGeneration(
        Qwen2_5OmniConfig(thinker_config=thinker_config(tokenizer).to_dict(), enable_audio_output=False,
                          architectures=["Qwen2_5OmniForConditionalGeneration"])))
    # Qwen2_5OmniForConditionalGeneration.from_pretrained requires the talker's speaker table even
    # without a talker; the released checkpoints ship one, the tiny model ships an empty one.
    torch.save({}, path / "spk_dict.pt")
    return path
