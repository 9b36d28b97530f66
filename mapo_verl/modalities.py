"""Non-text modalities beyond audio: which inputs carry them and how to remove them (pure torch, no veRL;
docs/DESIGN.md, "Beyond audio").

Nothing in MAPO's math is audio-specific: Δh needs a pass with a modality removed, the attention
loss needs that modality's key tokens. A :class:`Modality` names, for one modality, the keys of a
sample's ``multi_modal_inputs`` that carry its signal (``feature_keys``), the keys that only
describe its layout and stay so rope positions stay aligned (``layout_keys``: clip lengths, image /
video grids), and the model-config attributes of its placeholder and marker token ids.

Audio keeps its home in :mod:`mapo_verl.audio_inputs`; :data:`AUDIO` points at it and
:func:`ablate_modality` hands audio to :func:`mapo_verl.audio_inputs.ablate_audio`, so audio behaves
bit for bit as before. Images and videos (Qwen2.5-VL, the Omni thinkers' vision inputs) are new:

- ``drop`` (the method's default): remove the pixel features, keep the placeholders and the grid;
- ``zero`` / ``noise``: replace the features by zeros / Gaussian noise of the sample's own scale;
- ``patch_mask``: blacken a random share of the patches (the random patch masking of the
  grounding-RL peers), with the value a black pixel takes after the processor's normalisation;
- ``mismatch`` (:func:`mismatch_images`, batch-level): another sample's image with the same grid.

The modality is not yet wired into the trainer, worker or engines (they use :mod:`mapo_verl.audio_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from mapo_verl.audio_inputs import AUDIO_FEATURE_KEYS, AUDIO_MASK_KEYS, ablate_audio

__all__ = [
    "Modality",
    "AUDIO",
    "IMAGE",
    "VIDEO",
    "MODALITIES",
    "VISUAL_ABLATION_MODES",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "modality",
    "placeholder_token_id",
    "key_token_ids",
    "key_mask",
    "has_modality",
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


AUDIO = Modality("audio", AUDIO_FEATURE_KEYS, AUDIO_MASK_KEYS, ("audio_token_id", "audio_token_index"),
                 ("audio_start_token_id", "audio_end_token_id"))
IMAGE = Modality("image", ("pixel_values",), ("image_grid_thw",), ("image_token_id", "image_token_index"),
                 ("vision_start_token_id", "vision_end_token_id"))
VIDEO = Modality("video", ("pixel_values_videos",), ("video_grid_thw", "second_per_grid_ts", "video_second_per_grid"),
                 ("video_token_id", "video_token_index"), ("vision_start_token_id", "vision_end_token_id"))
MODALITIES = {m.name: m for m in (AUDIO, IMAGE, VIDEO)}
VISUAL_ABLATION_MODES = ("drop", "zero", "noise", "patch_mask")
# The normalisation of Qwen2-VL / Qwen2.5-VL's image processor (OpenAI CLIP's mean and std, RGB).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


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


def ablate_modality(inputs: Mapping[str, Any] | None, kind: Modality, mode: str, *, noise_scale: float = 1.0,
                    generator: torch.Generator | None = None, patch_ratio: float = 0.5,
                    patch_group: int = 1) -> dict[str, Any] | None:
    """A copy of ``inputs`` with ``kind`` removed according to ``mode``; samples without it come back
    unchanged (``None`` stays ``None``). Audio: exactly :func:`mapo_verl.audio_inputs.ablate_audio`."""
    if kind is AUDIO:
        return ablate_audio(inputs, mode, noise_scale=noise_scale, generator=generator)
    if mode not in VISUAL_ABLATION_MODES:
        raise ValueError(f"{kind.name} ablation mode must be one of {list(VISUAL_ABLATION_MODES)}, got {mode!r}")
    if inputs is None:
        return None
    out = dict(inputs)
    if not has_modality(inputs, kind):
        return out
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
