"""FSDP2 wrapping order for models whose no-split classes nest (the Omni thinkers).

veRL 0.9.1's ``apply_fsdp2`` calls ``fully_shard`` on every module whose class is in the
model's ``_no_split_modules``, in ``named_modules()`` (pre-)order. ``fully_shard`` must be
applied to a submodule before its ancestor; the Qwen2.5-Omni thinker lists both
``Qwen2_5OmniAudioEncoder`` and its ``Qwen2_5OmniAudioEncoderLayer`` (likewise the vision
encoder and its blocks), so the encoder is sharded before its layers and the first forward
with audio fails (FSDP2 "got mixed torch.Tensor and DTensor"). The wrapper returns the
same modules with every descendant before its ancestors, keeping the order of unrelated
modules (so forward-prefetch chains over decoder layers are unchanged); when no selected
module contains another, the result is exactly veRL's.
"""

from __future__ import annotations

import functools

import torch.nn as nn

__all__ = ["descendants_first", "install"]


def descendants_first(model: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """``modules`` reordered so each comes after all of its selected descendants (post-order)."""
    order: dict[int, int] = {}

    def visit(module: nn.Module) -> None:
        for child in module.children():
            visit(child)
        order.setdefault(id(module), len(order))

    visit(model)
    return sorted(modules, key=lambda module: order[id(module)])


def _wrap(original):
    @functools.wraps(original)
    def _select_fsdp2_wrap_targets(model, fsdp_transformer_layer_cls_to_wrap):
        return descendants_first(model, original(model, fsdp_transformer_layer_cls_to_wrap))

    return _select_fsdp2_wrap_targets


def install() -> None:
    """Patch ``verl.utils.fsdp_utils._select_fsdp2_wrap_targets`` when veRL imports it."""
    from mapo_verl.patches._hooks import replace_function

    replace_function("verl.utils.fsdp_utils", "_select_fsdp2_wrap_targets", _wrap)
