"""veRL's Qwen2-VL / Qwen2.5-VL forward for a batch without images under transformers 5.

veRL 0.9.1's ``verl.models.transformers.qwen2_vl._get_input_embeds`` runs the vision tower on a
dummy image when a micro-batch has no pixels (text-only rows, and MAPO's ablated pass, which
drops the images), and adds ``0 * mean`` of its output so every vision parameter takes part in
the backward pass (FSDP needs that). Under transformers 5 the tower returns an output object,
not a tensor, and veRL's ``.mean()`` on it raises ``AttributeError``: any image-free micro-batch
of a Qwen2.5-VL run fails. This patch handles that case itself — text embeddings plus the
zero-weighted dummy-image term, the output unpacked the way veRL unpacks it elsewhere — and
passes every micro-batch with pixels to veRL's function unchanged.
"""

from __future__ import annotations

import functools

__all__ = ["install"]

_HOME = "verl.models.transformers.qwen2_vl"
_DUMMY_GRID = (1, 4, 4)  # one 4×4-patch frame: the smallest grid the 2×2 merge accepts


def text_only_embeds(model, input_ids, attention_mask):
    """``(inputs_embeds, attention_mask)`` of an image-free micro-batch: the token embeddings, plus
    0 × the mean of the vision tower's output on a zero image (keeps the tower in the graph)."""
    import torch
    from verl.utils.transformers_compat import unpack_visual_output

    inputs_embeds = model.get_input_embeddings()(input_ids)
    vision = model.config.vision_config
    patches = _DUMMY_GRID[0] * _DUMMY_GRID[1] * _DUMMY_GRID[2]
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.zeros((patches, patch_dim), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    grid = torch.tensor([_DUMMY_GRID], dtype=torch.long, device=inputs_embeds.device)
    image_embeds, _ = unpack_visual_output(model.visual(pixels.type(model.visual.dtype), grid_thw=grid))
    inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean().to(inputs_embeds.dtype)
    if attention_mask is not None:
        attention_mask = attention_mask.to(inputs_embeds.device)
    return inputs_embeds, attention_mask


def _wrap(original):
    @functools.wraps(original)
    def get_input_embeds(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None,
                         image_grid_thw=None, video_grid_thw=None):
        if pixel_values is None and pixel_values_videos is None:
            return text_only_embeds(model, input_ids, attention_mask)
        return original(model, input_ids, attention_mask, pixel_values, pixel_values_videos, image_grid_thw,
                        video_grid_thw)

    return get_input_embeds


def install() -> None:
    """Replace ``_get_input_embeds`` of veRL's Qwen2-VL module (when veRL imports it)."""
    from mapo_verl.patches._hooks import replace_function

    replace_function(_HOME, "_get_input_embeds", _wrap)
