"""A tiny random Qwen2.5-VL (transformers' real ``Qwen2_5_VLForConditionalGeneration``) and image samples."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

VOCAB = 128
IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID = 120, 121, 122, 123
PATCH, TEMPORAL, MERGE = 14, 2, 2
PATCH_DIM = 3 * TEMPORAL * PATCH * PATCH


def tiny_qwen2_5_vl(attn_implementation: str = "eager", *, seed: int = 0, dtype=torch.float32):
    """2 decoder layers, GQA (4 query / 2 KV heads), 3-D mRoPE, a one-block vision tower, a peaked LM head."""
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": TEMPORAL,
                       "window_size": 56, "fullatt_block_indexes": [0], "in_channels": 3},
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():  # a peaked LM head: a random model's near-uniform outputs would hide the image's effect
        model.lm_head.weight.mul_(50.0)
    model.set_attn_implementation(attn_implementation)
    return model


def image_sample(grid=(1, 4, 4), *, prefix=(1, 5, 6), suffix=(7, 8, 9, 10, 11, 12, 13, 14), seed: int = 0,
                 dtype=torch.float32):
    """(input_ids [S], multi_modal_inputs) with one image: ``prefix``, <vision_start>, one placeholder per merged
    patch, <vision_end>, ``suffix`` (which plays the response); the inputs carry the token types, so the model
    builds its 3-D mRoPE positions from the grid."""
    t, h, w = grid
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(t * h * w, PATCH_DIM, generator=generator).to(dtype)
    placeholders = t * h * w // MERGE**2
    ids = torch.tensor([*prefix, VISION_START_ID, *[IMAGE_ID] * placeholders, VISION_END_ID, *suffix])
    # token types (text 0, image 1): without them transformers' Qwen2.5-VL falls back to 1-D positions
    types = (ids == IMAGE_ID).to(torch.int32)[None]
    return ids, {"pixel_values": pixels, "image_grid_thw": torch.tensor([list(grid)]), "mm_token_type_ids": types}


def video_sample(grid=(2, 4, 4), *, prefix=(1, 5, 6), suffix=(7, 8, 9, 10, 11, 12, 13, 14), seed: int = 0,
                 dtype=torch.float32):
    """(input_ids [S], multi_modal_inputs) with one video of ``grid`` (temporal patches of 2 frames each), laid out
    like :func:`image_sample` with video placeholders and token type 2."""
    t, h, w = grid
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(t * h * w, PATCH_DIM, generator=generator).to(dtype)
    ids = torch.tensor([*prefix, VISION_START_ID, *[VIDEO_ID] * (t * h * w // MERGE**2), VISION_END_ID, *suffix])
    types = ((ids == VIDEO_ID).to(torch.int32) * 2)[None]
    return ids, {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor([list(grid)]),
                 "second_per_grid_ts": torch.tensor([1.0]), "mm_token_type_ids": types}
