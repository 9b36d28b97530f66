"""Tiny Megatron-Bridge audio and vision models (real Megatron-Bridge classes) and their data, for the bridge lane.

Each family builds the model class that Megatron-Bridge's provider builds (``Qwen25OmniModel``,
``Qwen3OmniModel``, ``Qwen2AudioModel``, ``Qwen25VLModel``) from tiny HF configs: the providers of the two
Omni families hard-code Transformer Engine's layer spec, so their model classes are built directly with
the provider's arguments and the layer spec asked for; Qwen2-Audio's and Qwen2.5-VL's providers take a
layer spec and are used as they are. Every sample holds one item of the family's modality (a clip, or an
image for ``qwen25_vl``); its placeholders are the attention loss's keys. The caller imports
Megatron-Bridge first (on CPU: ``mapo_verl.cpu.megatron.import_megatron_bridge``, plus its
``install_cuda_shims``); ``scripts/gpu_check_megatron.sh`` builds the same models on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnBackend

from mapo_verl.cpu.megatron import padding_to_causal_mask
from mapo_verl.megatron.models import expose_stage_flags, find_language_model
from mapo_verl.patches import megatron_bridge as bridge_patches

assert bridge_patches.install(), "the pinned megatron-bridge is not the installed one"

VOCAB, HIDDEN, HEADS, GROUPS, LAYERS, SEQ = 96, 32, 4, 2, 4, 24
PAD, AUDIO, IMAGE, VIDEO, AUDIO_START, AUDIO_END, VISION_START, VISION_END = 0, 88, 89, 90, 91, 92, 93, 94
MEL_BINS = 8
CLIP_FRAMES = (20, 28, 36)  # valid mel frames of the clips (5, 7, 9 audio tokens for the Qwen2.5-Omni encoder)
QWEN2_AUDIO_FRAMES = 40  # Qwen2-Audio's encoder takes exactly 2 x max_source_positions frames
IMAGE_GRIDS = ((1, 4, 4), (1, 4, 6), (1, 6, 4))  # patch grids of the images (4, 6, 6 tokens after the 2×2 merge)
PATCH_DIM = 3 * 2 * 14 * 14  # channels × temporal patch × patch²

FAMILIES = ("qwen25_omni", "qwen3_omni", "qwen2_audio", "qwen25_vl")
VISION_FAMILIES = ("qwen25_vl",)
# the placeholder token the attention loss keys on, and the name part of the family's encoder parameters
KEY_TOKEN = {"qwen25_omni": AUDIO, "qwen3_omni": AUDIO, "qwen2_audio": AUDIO, "qwen25_vl": IMAGE}
ENCODER_NAME = {"qwen25_omni": "audio", "qwen3_omni": "audio", "qwen2_audio": "audio", "qwen25_vl": "visual"}


@dataclass(frozen=True)
class Numerics:
    """Precision and kernels: float64 with megatron-core's local layer spec (CPU tests), or bf16 with
    Transformer Engine's spec on a GPU."""

    dtype: torch.dtype = torch.float64
    transformer_engine: bool = False

    def layer_spec(self, **kwargs):
        if self.transformer_engine:
            return get_gpt_layer_with_transformer_engine_spec(**kwargs)
        return get_gpt_layer_local_spec(**kwargs)


CPU = Numerics()


def _common_config(tp: int, pp: int, recompute: str | None, numerics: Numerics) -> dict:
    extra = {}
    if recompute == "full":
        extra = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        extra = dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    return dict(
        num_layers=LAYERS, hidden_size=HIDDEN, ffn_hidden_size=48, num_attention_heads=HEADS, num_query_groups=GROUPS,
        kv_channels=HIDDEN // HEADS, vocab_size=VOCAB, normalization="RMSNorm", gated_linear_unit=True,
        add_bias_linear=False, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_dtype=numerics.dtype, params_dtype=numerics.dtype, bf16=numerics.dtype == torch.bfloat16,
        use_cpu_initialization=not torch.cuda.is_available(), hidden_dropout=0.0,
        attention_dropout=0.0, masked_softmax_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False, batch_p2p_comm=False,
        # megatron-core's local layer spec has no sequence-parallel norm
        attention_backend=AttnBackend.auto if numerics.transformer_engine else AttnBackend.local,
        sequence_parallel=False, share_embeddings_and_output_weights=False,
        **extra)


def _token_ids() -> dict:
    return dict(audio_token_id=AUDIO, image_token_id=IMAGE, video_token_id=VIDEO, audio_start_token_id=AUDIO_START,
                audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)


def _stage_flags() -> dict:
    return dict(pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())


# --------------------------------------------------------------------------- Qwen2.5-Omni
def _qwen25_omni(tp: int, pp: int, recompute: str | None, numerics: Numerics) -> torch.nn.Module:
    from megatron.bridge.models.qwen_omni.modeling_qwen25_omni.model import Qwen25OmniModel
    from megatron.bridge.models.qwen_omni.qwen25_omni_provider import Qwen25OmniModelProvider
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniThinkerConfig

    ids = _token_ids()
    thinker = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=HIDDEN, n_window=50, max_source_positions=64),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=GROUPS,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        audio_token_index=AUDIO, image_token_index=IMAGE, video_token_index=VIDEO, audio_start_token_id=AUDIO_START,
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    provider = Qwen25OmniModelProvider(
        thinker_config=thinker, head_dim=HIDDEN // HEADS, add_qkv_bias=True, qk_layernorm=False,
        mrope_section=[1, 1, 2], rotary_base=10000.0, language_max_sequence_length=SEQ, position_id_per_seconds=25,
        **ids, **_common_config(tp, pp, recompute, numerics))
    provider.finalize()
    return Qwen25OmniModel(language_transformer_config=provider,
                           language_transformer_layer_spec=numerics.layer_spec(qk_layernorm=False),
                           thinker_transformer_config=thinker, pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
                           **_stage_flags())


# --------------------------------------------------------------------------- Qwen3-Omni (MoE)
def _qwen3_omni(tp: int, pp: int, recompute: str | None, numerics: Numerics) -> torch.nn.Module:
    from megatron.bridge.models.qwen_omni.modeling_qwen3_omni.model import Qwen3OmniModel
    from megatron.bridge.models.qwen_omni.qwen3_omni_provider import Qwen3OmniModelProvider
    from transformers import Qwen3OmniMoeThinkerConfig

    thinker = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(num_mel_bins=MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=HIDDEN, n_window=50, n_window_infer=200, max_source_positions=64,
                          downsample_hidden_size=8),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=GROUPS, head_dim=HIDDEN // HEADS,
                         moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        **_token_ids())
    provider = Qwen3OmniModelProvider(
        thinker_config=thinker, qk_layernorm=True, mrope_section=[1, 1, 2], rotary_base=10000.0,
        language_max_sequence_length=SEQ, num_moe_experts=4, moe_router_topk=2, moe_ffn_hidden_size=16,
        moe_grouped_gemm=False, moe_permute_fusion=False, moe_router_load_balancing_type="none",
        # veRL sets the alltoall dispatcher, which opens a CUDA stream at construction; allgather runs on CPU
        moe_aux_loss_coeff=0.0, moe_token_dispatcher_type="allgather", **_token_ids(),
        **_common_config(tp, pp, recompute, numerics))
    provider.finalize()
    spec = numerics.layer_spec(num_experts=4, moe_grouped_gemm=False, qk_layernorm=True)
    return Qwen3OmniModel(language_transformer_config=provider, language_transformer_layer_spec=spec,
                          thinker_transformer_config=thinker, pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
                          **_stage_flags())


# --------------------------------------------------------------------------- Qwen2-Audio
def _qwen2_audio(tp: int, pp: int, recompute: str | None, numerics: Numerics) -> torch.nn.Module:
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.models.qwen_audio.qwen2_audio_provider import Qwen2AudioModelProvider
    from transformers import Qwen2AudioConfig

    hf_config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=MEL_BINS, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, max_source_positions=QWEN2_AUDIO_FRAMES // 2),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=GROUPS),
        audio_token_index=AUDIO)
    spec = {} if numerics.transformer_engine else dict(transformer_layer_spec=local_layer_spec)
    provider = Qwen2AudioModelProvider(hf_config=hf_config, audio_token_id=AUDIO, add_qkv_bias=True, **spec,
                                       rotary_base=10000.0,
                                       seq_length=SEQ, **_common_config(tp, pp, recompute, numerics))
    provider.finalize()
    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    return provider.provide(**_stage_flags())


# --------------------------------------------------------------------------- Qwen2.5-VL
def _qwen25_vl(tp: int, pp: int, recompute: str | None, numerics: Numerics) -> torch.nn.Module:
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.models.qwen_vl.qwen25_vl_provider import Qwen25VLModelProvider
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    vision = Qwen2_5_VLVisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                                    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                    fullatt_block_indexes=[0], in_channels=3, torch_dtype=numerics.dtype)
    spec = {} if numerics.transformer_engine else dict(transformer_layer_spec=local_layer_spec)
    provider = Qwen25VLModelProvider(
        vision_config=vision, mrope_section=[1, 1, 2], add_qkv_bias=True, rotary_base=10000.0, seq_length=SEQ,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, bos_token_id=1, eos_token_id=2, **spec,
        **_common_config(tp, pp, recompute, numerics))
    provider.finalize()
    provider._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    return provider.provide(**_stage_flags())


_BUILDERS: dict[str, Callable[[int, int, str | None, Numerics], torch.nn.Module]] = {
    "qwen25_omni": _qwen25_omni, "qwen3_omni": _qwen3_omni, "qwen2_audio": _qwen2_audio, "qwen25_vl": _qwen25_vl}


def build_model(family: str, *, tp: int = 1, pp: int = 1, recompute: str | None = None,
                numerics: Numerics = CPU, seed: int = 5) -> torch.nn.Module:
    """The family's model chunk for this rank's pipeline stage, stage flags exposed, with the mask shim.

    The Omni thinkers also read the [B, S] mask for their rope index, so the shim sits on their language
    model; Qwen2-Audio and Qwen2.5-VL call their language model's ``forward`` directly (no hooks run), so it
    sits on the top.
    """
    from megatron.core.enums import ModelType

    torch.manual_seed(seed)
    model = expose_stage_flags(_BUILDERS[family](tp, pp, recompute, numerics))
    model.model_type = ModelType.encoder_or_decoder  # what Megatron-Bridge's get_model sets for the schedules
    if not numerics.transformer_engine:  # TE reads the [B, S] mask itself
        (model if family in ("qwen2_audio", "qwen25_vl") else find_language_model(model)).register_forward_pre_hook(
            padding_to_causal_mask, with_kwargs=True)
    return model


# --------------------------------------------------------------------------- data
def audio_tokens(family: str, frames: int) -> int:
    """Placeholder tokens of a clip with ``frames`` valid mel frames (transformers' own length rules)."""
    from mapo_verl.patches.audio_models import audio_family

    model_type = {"qwen25_omni": "qwen2_5_omni_thinker", "qwen3_omni": "qwen3_omni_moe_thinker",
                  "qwen2_audio": "qwen2_audio"}[family]
    return int(audio_family(model_type).output_lengths(torch.tensor([frames]))[0])


@dataclass
class Sample:
    ids: torch.Tensor  # [SEQ], right-padded with PAD
    length: int
    prompt: int  # prompt length; the response follows
    frames: int  # valid mel frames of the sample's clip (0: no audio)
    features: torch.Tensor | None  # [MEL_BINS, frames_padded], or an image's patches [t·h·w, PATCH_DIM]
    grid: tuple[int, int, int] | None = None  # an image's patch grid


def _image_samples(count: int, seed: int) -> list[Sample]:
    """Samples ``[text][VISION_START][IMAGE…][VISION_END][text][response][PAD…]`` with one image each."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        grid = IMAGE_GRIDS[index % len(IMAGE_GRIDS)]
        patches = grid[0] * grid[1] * grid[2]
        text = lambda n: torch.randint(1, AUDIO, (n,), generator=g)  # noqa: E731
        pieces = [text(1), torch.tensor([VISION_START]), torch.full((patches // 4,), IMAGE), torch.tensor([VISION_END]),
                  text(2)]
        prompt = sum(p.numel() for p in pieces)
        response = int(torch.randint(5, SEQ - prompt - 1, (1,), generator=g))
        body = torch.cat(pieces + [text(response)])
        ids = torch.full((SEQ,), PAD)
        ids[: body.numel()] = body
        samples.append(Sample(ids=ids, length=body.numel(), prompt=prompt, frames=0,
                              features=torch.randn(patches, PATCH_DIM, generator=g), grid=grid))
    return samples


def make_samples(family: str, count: int, seed: int, *, with_audio=lambda i: True) -> list[Sample]:
    """Samples ``[text][AUDIO_START][placeholders][AUDIO_END][text][response][PAD…]`` with one clip each (one
    image each for the vision families)."""
    if family in VISION_FAMILIES:
        return _image_samples(count, seed)
    g = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        audio = with_audio(index)
        frames = CLIP_FRAMES[index % len(CLIP_FRAMES)] if audio else 0
        n_audio = audio_tokens(family, frames) if audio else 0
        text = lambda n: torch.randint(1, AUDIO, (n,), generator=g)  # noqa: E731
        pieces = [text(1)] + ([torch.tensor([AUDIO_START]), torch.full((n_audio,), AUDIO),
                               torch.tensor([AUDIO_END])] if audio else []) + [text(2)]
        prompt = sum(p.numel() for p in pieces)
        response = int(torch.randint(5, SEQ - prompt - 1, (1,), generator=g))
        body = torch.cat(pieces + [text(response)])
        ids = torch.full((SEQ,), PAD)
        ids[: body.numel()] = body
        padded_frames = QWEN2_AUDIO_FRAMES if family == "qwen2_audio" else max(CLIP_FRAMES)
        features = None
        if audio:
            features = torch.zeros(MEL_BINS, padded_frames)
            features[:, :frames] = torch.randn(MEL_BINS, frames, generator=g)
        samples.append(Sample(ids=ids, length=body.numel(), prompt=prompt, frames=frames, features=features))
    return samples


def model_inputs(family: str, samples: list[Sample], *, drop_audio: bool = False) -> dict:
    """The model's keyword arguments for a micro-batch of ``samples`` (features dropped when ``drop_audio``,
    placeholders kept: the audio-ablated pass)."""
    ids = torch.stack([s.ids for s in samples])
    mask = torch.arange(SEQ)[None, :] < torch.tensor([s.length for s in samples])[:, None]
    inputs = dict(input_ids=ids, attention_mask=mask)
    if family in VISION_FAMILIES:
        inputs["pixel_values"] = torch.cat([s.features for s in samples])
        inputs["image_grid_thw"] = torch.tensor([list(s.grid) for s in samples])
        return inputs
    if family == "qwen2_audio":
        inputs["position_ids"] = torch.arange(SEQ).expand(len(samples), SEQ)
    clips = [s for s in samples if s.features is not None]
    if clips and not drop_audio:
        inputs["input_features"] = torch.stack([s.features for s in clips])
        fmask = torch.zeros(len(clips), clips[0].features.shape[1], dtype=torch.long)
        for row, sample in enumerate(clips):
            fmask[row, : sample.frames] = 1
        inputs["feature_attention_mask"] = fmask
    return inputs


def labels_and_masks(samples: list[Sample], key_token: int = AUDIO) -> dict:
    """Next-token labels, the response-token loss mask (positions predicting response tokens), and the keys of
    the attention loss (``audio``: the ``key_token`` placeholders, image ones for the vision families)."""
    ids = torch.stack([s.ids for s in samples])
    position = torch.arange(SEQ)[None, :]
    prompt = torch.tensor([s.prompt for s in samples])[:, None]
    length = torch.tensor([s.length for s in samples])[:, None]
    response = (position >= prompt - 1) & (position < length - 1)
    return dict(labels=torch.roll(ids, -1, dims=1), loss_mask=response, audio=ids == key_token)
