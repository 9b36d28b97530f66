"""The non-text modalities a sample carries, and how to remove them (pure torch, no veRL import).

Nothing in MAPO's math is audio-specific: Δh needs a pass with a modality removed, the attention loss needs
that modality's key tokens (docs/DESIGN.md, "Beyond audio"). A :class:`Modality` names, for one modality,
the keys of a sample's ``multi_modal_inputs`` that carry its signal (``feature_keys``), the keys that only
describe its layout and stay so rope positions stay aligned (``layout_keys``: clip lengths, image / video
grids), and the model-config attributes of its placeholder and marker token ids (top level, or an Omni
``thinker_config``). The attention loss counts the placeholders and, by default, the markers as keys, as
the authors' release does for audio.

Ablations (the audio-ablated pass, docs/DESIGN.md "Step order"), per sample:

- ``drop`` (the authors'): remove the features; the placeholder tokens stay in ``input_ids`` with their
  plain token embeddings and the layout keys stay, so response positions and rope positions stay aligned
  whether the positions come with the batch or the model computes them (the Omni thinkers on
  Megatron-Bridge);
- ``zero``: keep the keys, replace the features by zeros (silence, for audio);
- ``noise``: keep the keys, replace the features by Gaussian noise with the sample's own feature standard
  deviation times ``noise_scale``;
- images and video also: ``patch_mask`` (a random share of the patches blackened, as the grounding-RL peers
  do) and, batch-level, :func:`mismatch_images` (another sample's image with the same grid).

For audio, ``scope="audio"`` (the authors' default) leaves image and video keys untouched; ``scope="all"``
drops the image and video features of a sample with audio too (their grids stay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mapo_verl.core.contract import ABLATION_MODES, MODALITY_SCOPES

__all__ = [
    "AUDIO_FEATURE_KEYS",
    "AUDIO_MASK_KEYS",
    "AUDIO_MODEL_KEYS",
    "VISION_FEATURE_KEYS",
    "Modality",
    "AUDIO",
    "IMAGE",
    "VIDEO",
    "MODALITIES",
    "metric_label",
    "VISUAL_ABLATION_MODES",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "modality",
    "placeholder_token_id",
    "key_token_ids",
    "key_mask",
    "has_modality",
    "ablate_audio",
    "ablate_modality",
    "blacken_patches",
    "mismatch_images",
]


@dataclass(frozen=True)
class Modality:
    """Where one modality lives in a sample's inputs and in a model config."""

    name: str
    feature_keys: tuple[str, ...]  # the signal: what an ablation removes or replaces
    layout_keys: tuple[str, ...]  # lengths / grids: kept, the rope index reads them
    placeholder_attrs: tuple[str, ...]  # config attributes naming the placeholder token id (first found wins)
    marker_attrs: tuple[str, ...]  # config attributes naming its start / end marker ids


# Audio start / end markers: Qwen2.5-Omni <|audio_bos|>/<|audio_eos|>, Qwen3-Omni <|audio_start|>/<|audio_end|>,
# none for Qwen2-Audio.
AUDIO = Modality("audio", ("input_features",), ("feature_attention_mask", "audio_feature_lengths"),
                 ("audio_token_id", "audio_token_index"), ("audio_start_token_id", "audio_end_token_id"))
IMAGE = Modality("image", ("pixel_values",), ("image_grid_thw",), ("image_token_id", "image_token_index"),
                 ("vision_start_token_id", "vision_end_token_id"))
VIDEO = Modality("video", ("pixel_values_videos",), ("video_grid_thw", "second_per_grid_ts", "video_second_per_grid"),
                 ("video_token_id", "video_token_index"), ("vision_start_token_id", "vision_end_token_id"))
MODALITIES = {m.name: m for m in (AUDIO, IMAGE, VIDEO)}

AUDIO_FEATURE_KEYS = AUDIO.feature_keys
AUDIO_MASK_KEYS = AUDIO.layout_keys
AUDIO_MODEL_KEYS = AUDIO_FEATURE_KEYS + AUDIO_MASK_KEYS  # the audio keys of a model call
VISION_FEATURE_KEYS = IMAGE.feature_keys + VIDEO.feature_keys  # dropped with the audio under scope "all"
VISUAL_ABLATION_MODES = ABLATION_MODES + ("patch_mask",)
# The normalisation of Qwen2-VL / Qwen2.5-VL's image processor (OpenAI CLIP's mean and std, RGB).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def metric_label(names: Sequence[str]) -> str:
    """The modality part of the ``mapo/<label>_*`` metric names: the configured modalities in the fixed
    order audio, image, video, joined by ``+`` (``[audio]`` gives ``audio``: the names of audio-only runs)."""
    unknown = [name for name in names if name not in MODALITIES]
    if unknown or not names:
        raise ValueError(f"modalities {list(names)}: need a non-empty list of names from {sorted(MODALITIES)}")
    return "+".join(name for name in MODALITIES if name in names)


def modality(name: str) -> Modality:
    """The :class:`Modality` called ``name``; an unknown name is an error listing the known ones."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {sorted(MODALITIES)}")
    return MODALITIES[name]


def _config_ids(config_or_model, attrs: tuple[str, ...]) -> list[int]:
    config = getattr(config_or_model, "config", config_or_model)
    found = []
    for source in (config, getattr(config, "thinker_config", None)):
        for name in attrs:
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value not in found:
                found.append(value)
    return found


def placeholder_token_id(config_or_model, kind: Modality) -> int:
    """The placeholder id of ``kind`` in an HF config or model (top level or an Omni ``thinker_config``)."""
    found = _config_ids(config_or_model, kind.placeholder_attrs)
    if not found:
        raise ValueError(f"{type(config_or_model).__name__} has no {' / '.join(kind.placeholder_attrs)} (nor in "
                         f"thinker_config): MAPO needs the {kind.name} placeholder id to find {kind.name} keys")
    return found[0]


def key_token_ids(config_or_model, kinds: Sequence[Modality], include_markers: bool = True) -> tuple[int, ...]:
    """The token ids the attention loss counts as keys of ``kinds``: their placeholders and, with
    ``include_markers``, the start / end markers the config names (shared vision markers count once)."""
    ids: list[int] = []
    for kind in kinds:
        for value in [placeholder_token_id(config_or_model, kind)] + (
                _config_ids(config_or_model, kind.marker_attrs) if include_markers else []):
            if value not in ids:
                ids.append(value)
    return tuple(ids)


def key_mask(input_ids: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """bool, shaped like ``input_ids``: positions holding one of ``ids``."""
    return torch.isin(input_ids, torch.tensor(list(ids), dtype=input_ids.dtype, device=input_ids.device))


def has_modality(inputs: Mapping[str, Any] | None, kind: Modality) -> bool:
    """Whether a sample's multimodal inputs hold non-empty features of ``kind``."""
    if not inputs:
        return False
    return any(isinstance(inputs.get(key), torch.Tensor) and inputs[key].numel() > 0 for key in kind.feature_keys)


def _noise_like(features: torch.Tensor, noise_scale: float, generator: torch.Generator | None) -> torch.Tensor:
    scale = features.float().std().nan_to_num(0.0) * noise_scale
    noise = torch.randn(features.shape, generator=generator, dtype=torch.float32, device="cpu")
    return (noise.to(features.device) * scale.to(features.device)).to(features.dtype)


def blacken_patches(features: torch.Tensor, ratio: float, *, generator: torch.Generator | None = None,
                    channels: int = 3, mean: Sequence[float] = CLIP_IMAGE_MEAN,
                    std: Sequence[float] = CLIP_IMAGE_STD, group: int = 1) -> torch.Tensor:
    """A copy of flattened patch features ``[num_patches, channels · rest]`` (Qwen2-VL layout: channel
    first within a row) with ``round(ratio · groups)`` random groups of ``group`` consecutive patches set to
    black, i.e. ``(0 − mean_c) / std_c`` per channel (``group`` = spatial_merge_size² blackens whole
    visual tokens)."""
    if features.dim() != 2 or features.shape[1] % channels:
        raise ValueError(f"patch features must be [num_patches, {channels}·k], got {tuple(features.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"patch mask ratio must be in [0, 1], got {ratio}")
    if group < 1 or features.shape[0] % group:
        raise ValueError(f"{features.shape[0]} patches do not split into groups of {group}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} values, got {len(mean)} and {len(std)}")
    groups = features.shape[0] // group
    chosen = torch.randperm(groups, generator=generator)[: round(ratio * groups)]
    rows = (chosen[:, None] * group + torch.arange(group)).flatten()
    black = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=features.dtype, device=features.device)
    out = features.clone()
    out[rows.to(features.device)] = black.repeat_interleave(features.shape[1] // channels)
    return out


def _replace_features(inputs: Mapping[str, Any], kind: Modality, mode: str, noise_scale: float,
                      generator: torch.Generator | None, patch_ratio: float, patch_group: int) -> dict[str, Any]:
    out = dict(inputs)
    for key in kind.feature_keys:
        features = inputs.get(key)
        if not isinstance(features, torch.Tensor):
            continue
        if mode == "drop":
            del out[key]
        elif mode == "zero":
            out[key] = torch.zeros_like(features)
        elif mode == "noise":
            out[key] = _noise_like(features, noise_scale, generator)
        else:
            out[key] = blacken_patches(features, patch_ratio, generator=generator, group=patch_group)
    return out


def ablate_modality(inputs: Mapping[str, Any] | None, kind: Modality, mode: str, *, noise_scale: float = 1.0,
                    generator: torch.Generator | None = None, patch_ratio: float = 0.5,
                    patch_group: int = 1) -> dict[str, Any] | None:
    """A copy of ``inputs`` with ``kind`` removed according to ``mode``; samples without it come back
    unchanged (``None`` stays ``None``)."""
    modes = ABLATION_MODES if kind is AUDIO else VISUAL_ABLATION_MODES
    if mode not in modes:
        raise ValueError(f"{kind.name} ablation mode must be one of {list(modes)}, got {mode!r}")
    if inputs is None:
        return None
    if not has_modality(inputs, kind):
        return dict(inputs)
    return _replace_features(inputs, kind, mode, noise_scale, generator, patch_ratio, patch_group)


def ablate_audio(inputs: Mapping[str, Any] | None, mode: str, *, noise_scale: float = 1.0,
                 generator: torch.Generator | None = None, scope: str = "audio") -> dict[str, Any] | None:
    """:func:`ablate_modality` for audio, with ``scope="all"`` also dropping the image / video features of a
    sample with audio (the release's ``text_only_modality_scope``)."""
    out = ablate_modality(inputs, AUDIO, mode, noise_scale=noise_scale, generator=generator)
    if scope not in MODALITY_SCOPES:
        raise ValueError(f"text_only_modality_scope must be one of {list(MODALITY_SCOPES)}, got {scope!r}")
    if scope == "all" and has_modality(inputs, AUDIO):
        for key in VISION_FEATURE_KEYS:
            out.pop(key, None)
    return out


def mismatch_images(samples: Sequence[Mapping[str, Any] | None], kind: Modality = IMAGE, *,
                    generator: torch.Generator | None = None) -> list[dict[str, Any] | None]:
    """Each sample's ``kind`` features replaced by those of a random other sample with the same layout
    (grid) and different features, so placeholders and positions stay valid. Samples without ``kind``
    are unchanged; a sample with no such partner is an error naming its row."""
    def layout(sample):
        return tuple(tuple(sample[k].flatten().tolist()) if isinstance(sample.get(k), torch.Tensor) else None
                     for k in kind.layout_keys)

    rows = [i for i, sample in enumerate(samples) if has_modality(sample, kind)]
    out = [None if sample is None else dict(sample) for sample in samples]
    for row in rows:
        partners = [other for other in rows if layout(samples[other]) == layout(samples[row]) and any(
            not torch.equal(samples[other][k], samples[row][k]) for k in kind.feature_keys if k in samples[row])]
        if not partners:
            raise ValueError(f"row {row}: no other sample in the batch has {kind.name} features with the same "
                             f"{'/'.join(kind.layout_keys)} and different values to swap in")
        partner = partners[int(torch.randint(len(partners), (1,), generator=generator))]
        for key in kind.feature_keys:
            if key in samples[row]:
                out[row][key] = samples[partner][key]
    return out
