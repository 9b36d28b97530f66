"""What MAPO reads from a megatron-core model chunk, whatever model wraps the language decoder.

A chunk is a megatron-core ``GPTModel`` (plain language models), or a multimodal module that
holds exactly one (Megatron-Bridge's Qwen2.5-Omni / Qwen3-Omni models keep it at
``thinker.language_model``, Qwen2-Audio at ``language_model``), possibly wrapped by DDP /
``Float16Module``. Only megatron-core is imported here (``docs/DESIGN.md``, "Megatron").
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_layer import TransformerLayer

__all__ = ["find_language_model", "decoder_layers", "expose_stage_flags"]


def find_language_model(chunk: torch.nn.Module) -> GPTModel:
    """The one megatron-core ``GPTModel`` (the language decoder) inside ``chunk``."""
    found = [m for m in chunk.modules() if isinstance(m, GPTModel)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one megatron-core GPTModel (the language decoder) in the model chunk "
                         f"{type(chunk).__name__}, found {len(found)}")
    return found[0]


def decoder_layers(language_model: GPTModel) -> list[TransformerLayer]:
    """The transformer layers this pipeline stage / VPP chunk holds (none on a stage without decoder)."""
    decoder = language_model.decoder
    if decoder is None:
        return []
    return [layer for layer in decoder.layers if isinstance(layer, TransformerLayer)]


def expose_stage_flags(model: torch.nn.Module) -> torch.nn.Module:
    """Give an unwrapped chunk the ``pre_process`` / ``post_process`` flags of its language model.

    Pipeline schedules and trainers (veRL's ``model_forward`` among them) read these two flags
    on the top-level module; Megatron-Bridge's ``Qwen25OmniModel`` keeps them only on its
    thinker. The flags are taken from the chunk's language model, which every stage builds.
    Modules that already carry both are returned unchanged.
    """
    if hasattr(model, "pre_process") and hasattr(model, "post_process"):
        return model
    language_model = find_language_model(model)
    model.pre_process = language_model.pre_process
    model.post_process = language_model.post_process
    return model
