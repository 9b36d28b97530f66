"""veRL's FSDP engine on a full Omni checkpoint, and the names its weight sync sends.

vLLM 0.24.0 serves the Omni models only as their full architectures
(``Qwen2_5OmniForConditionalGeneration``, ``Qwen3OmniMoeForConditionalGeneration``), so on GPU the
checkpoint is the full one, and vLLM loads the names that checkpoint holds. veRL 0.9.1's FSDP engine
(docs/DESIGN.md, "Patches"):

- builds the class its auto mapping gives for the checkpoint's config: for a full Omni checkpoint the full
  model, which has no training forward, and it reads ``hf_config.tie_word_embeddings``, which a full Omni
  config does not carry. The actor trains the thinker, so the engine gets the thinker's config; transformers
  loads a thinker from a full checkpoint by stripping the ``thinker.`` prefix;
- sends the module's own names at weight sync (``get_per_tensor_param`` and its sharded variant). These are
  not the checkpoint's names: a thinker's lack ``thinker.``, and transformers 5.10 keeps Qwen2-Audio as
  ``model.language_model.*`` / ``model.audio_tower.*`` / ``lm_head.*`` where its checkpoints (and vLLM's
  loader, which has no renaming for it) say ``language_model.model.*`` / ``audio_tower.*`` /
  ``language_model.lm_head.*``. vLLM rejects the first and would leave the rollout on stale weights.

:func:`checkpoint_name_rule` maps module names back to the checkpoint's layout; a thinker-only checkpoint
(the CPU dry run's HF rollout loads it as it is) keeps its names.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Iterable, Iterator

__all__ = ["OMNI_FULL_MODEL_TYPES", "checkpoint_name_rule", "install", "is_full_omni", "trained_config"]

# the full Omni checkpoints: a ``thinker_config`` next to a talker and a code-to-wave model
OMNI_FULL_MODEL_TYPES = ("qwen2_5_omni", "qwen3_omni_moe")

# transformers 5 module prefix -> Qwen2-Audio checkpoint prefix (the prefixes do not overlap; names already in
# the checkpoint layout, as transformers 5.8 / 5.9 keep them, match none and pass unchanged)
_QWEN2_AUDIO_CHECKPOINT_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.audio_tower.", "audio_tower."),
    ("lm_head.", "language_model.lm_head."),
)


def is_full_omni(hf_config: Any) -> bool:
    return getattr(hf_config, "model_type", None) in OMNI_FULL_MODEL_TYPES


def trained_config(hf_config: Any) -> Any:
    """The config of the module the actor trains: a full Omni checkpoint's thinker, else the config itself."""
    return hf_config.thinker_config if is_full_omni(hf_config) else hf_config


def _qwen2_audio_checkpoint_name(name: str) -> str:
    for module_prefix, checkpoint_prefix in _QWEN2_AUDIO_CHECKPOINT_PREFIXES:
        if name.startswith(module_prefix):
            return checkpoint_prefix + name[len(module_prefix):]
    return name


def _thinker_checkpoint_name(name: str) -> str:
    return "thinker." + name


def checkpoint_name_rule(hf_config: Any) -> Callable[[str], str] | None:
    """How a trained module's parameter name is spelled in the checkpoint ``hf_config`` was read from.

    None where the names agree (a thinker-only checkpoint, any model outside the audio families).
    """
    if is_full_omni(hf_config):
        return _thinker_checkpoint_name
    if getattr(hf_config, "model_type", None) == "qwen2_audio":
        return _qwen2_audio_checkpoint_name
    return None


def _renamed(named: Iterable[tuple], rule: Callable[[str], str]) -> Iterator[tuple]:
    for name, *rest in named:
        yield (rule(name), *rest)


def _wrap_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self, model_config, *args, **kwargs):
        rule = checkpoint_name_rule(model_config.hf_config)
        if is_full_omni(model_config.hf_config):
            # the engine's own view only: the worker's model config (rollout, flops counter) keeps the checkpoint's
            model_config = copy.copy(model_config)
            model_config.hf_config = trained_config(model_config.hf_config)
        original(self, model_config, *args, **kwargs)
        self.checkpoint_name_rule = rule

    return __init__


def _wrap_export(original: Callable) -> Callable:
    @functools.wraps(original)
    def export(self, *args, **kwargs):
        params, peft_config = original(self, *args, **kwargs)
        rule = getattr(self, "checkpoint_name_rule", None)
        # LoRA adapters travel under PEFT's names, which vLLM's LoRA loader maps itself
        if rule is None or peft_config is not None:
            return params, peft_config
        return _renamed(params, rule), peft_config

    return export


def _patch_engine(module) -> None:
    from mapo_verl.patches._hooks import wrap_methods

    wrap_methods(module.FSDPEngine, "__mapo_checkpoint_names__", {
        "__init__": _wrap_init, "get_per_tensor_param": _wrap_export, "get_per_tensor_param_shard": _wrap_export})


def install() -> None:
    """Patch ``verl.workers.engine.fsdp.transformer_impl.FSDPEngine`` when veRL imports it."""
    from mapo_verl.patches._hooks import when_imported

    when_imported("verl.workers.engine.fsdp.transformer_impl", _patch_engine)
