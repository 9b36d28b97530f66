"""veRL's ``hf_processor`` for the audio-language processors it rejects.

veRL 0.9.1's ``verl.utils.tokenizer.hf_processor`` matches the processor class against a
list of vision-language processors and, for any other (``Qwen2_5OmniProcessor``,
``Qwen2AudioProcessor``, ``Qwen3OmniMoeProcessor``), logs a warning and returns ``None``:
the run then silently trains without audio. The wrapper here loads those processors
itself and gives them what veRL's agent loop expects of a multimodal processor:

- ``processor.config``: the model config (veRL attaches it for its own processors);
- for the Omni thinkers, ``processor.get_rope_index``: the thinker's multimodal-RoPE
  index (veRL calls it to build the [4, seq] position ids it trains with), and
  ``processor.get_rope_index_kwargs``: the audio lengths that index needs;
- Qwen2-Audio uses plain 1-D positions, so it gets no rope index (veRL then uses
  ``compute_position_id_with_mask``).

Every other processor goes to veRL's original function; where torchvision is missing, the
video-processor base class is put back first (:func:`allow_processors_without_torchvision`), or
veRL would fail to load its own vision-language processors and train without the images.
"""

from __future__ import annotations

import functools
import types
from typing import Any

from mapo_verl.patches.audio_models import AudioModelFamily, audio_family

__all__ = ["allow_processors_without_torchvision", "load_audio_processor", "install"]

# modules that bind ``hf_processor`` by name at import time
_IMPORTERS = (
    "verl.utils.tokenizer.tokenizer",
    "verl.utils.tokenizer",
    "verl.utils",
    "verl.workers.config.model",
    "verl.model_merger.base_model_merger",
    "verl.model_merger.megatron_model_merger",
)


def allow_processors_without_torchvision() -> None:
    """Let processors with a video component be built where torchvision is not installed.

    Without torchvision, ``transformers.BaseVideoProcessor`` is a placeholder that raises on
    use, and every processor with a video slot (both Omni processors) fails its argument
    type check even for audio-only inputs. The real base class does not need torchvision,
    so it is put back in its place; video decoding still needs torchvision.

    transformers re-creates its lazy top-level module whenever a submodule imports it
    "directly" (``direct_transformers_import``), so the class is set on the module object
    the processor type check consults and on the current ``sys.modules`` entry (which
    ``AutoVideoProcessor`` resolves class names from); call this right before loading a
    processor.
    """
    import sys

    from transformers import processing_utils
    from transformers.utils import is_torchvision_available
    from transformers.video_processing_utils import BaseVideoProcessor

    if is_torchvision_available():
        return
    for module in (processing_utils.transformers_module, sys.modules["transformers"]):
        module.BaseVideoProcessor = BaseVideoProcessor


class _RopeIndex:
    """Calls a thinker's ``get_rope_index`` without a model instance.

    The index reads only ``self.config``, ``self.spatial_merge_size`` and two helper methods
    of the thinker class; this object supplies exactly those.
    """

    def __init__(self, thinker_class: type, config: Any):
        self._thinker_class = thinker_class
        self.config = config
        self.spatial_merge_size = config.vision_config.spatial_merge_size

    def __getattr__(self, name: str):
        if name.startswith("_"):  # also keeps copy/pickle from recursing before __init__ ran
            raise AttributeError(name)
        method = getattr(self._thinker_class, name)
        return types.MethodType(method, self)


def _rope_index_kwargs(multi_modal_inputs: dict) -> dict:
    """Audio-aware extras for the Omni ``get_rope_index`` (veRL passes image/video grids itself)."""
    kwargs: dict = {"use_audio_in_video": False}
    feature_attention_mask = multi_modal_inputs.get("feature_attention_mask")
    if feature_attention_mask is not None:
        kwargs["audio_seqlens"] = feature_attention_mask.sum(-1)
    second_per_grid = multi_modal_inputs.get("video_second_per_grid")
    if second_per_grid is not None:
        kwargs["second_per_grids"] = second_per_grid
    return kwargs


def load_audio_processor(name_or_path: str, family: AudioModelFamily, config: Any, **kwargs):
    """Load an audio-language processor and attach what veRL's agent loop reads from it."""
    from transformers import AutoProcessor

    allow_processors_without_torchvision()
    processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    if type(processor).__name__ != family.processor_class:
        raise ValueError(
            f"{name_or_path}: a {config.model_type} model needs a {family.processor_class}, "
            f"found {type(processor).__name__} (check processor_config.json / tokenizer_config.json)"
        )
    processor.config = config
    if family.thinker_class is not None:
        thinker_config = getattr(config, "thinker_config", config)  # a full Omni checkpoint: its thinker's
        processor.get_rope_index = _RopeIndex(family.thinker_class(), thinker_config).get_rope_index
        processor.get_rope_index_kwargs = _rope_index_kwargs
    return processor


def _wrap(original):
    @functools.wraps(original)
    def hf_processor(name_or_path, **kwargs):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
        except Exception:  # not a model directory: veRL's own handling (and warning) applies
            return original(name_or_path, **kwargs)
        family = audio_family(getattr(config, "model_type", None))
        if family is None:
            # veRL's own vision-language processors (Qwen2.5-VL, ...) have a video slot too: without this,
            # loading one where torchvision is missing fails inside veRL's try and it returns None
            allow_processors_without_torchvision()
            return original(name_or_path, **kwargs)
        return load_audio_processor(name_or_path, family, config, **kwargs)

    return hf_processor


def install() -> None:
    """Replace ``hf_processor`` in veRL's tokenizer module and in every module that imported it."""
    from mapo_verl.patches._hooks import replace_function

    replace_function("verl.utils.tokenizer.tokenizer", "hf_processor", _wrap, _IMPORTERS)
