"""vLLM's weight-loading rules for the audio models MAPO trains, written as data, and a checker.

Where the rules come from: the vLLM **0.24.0** wheel from PyPI (``vllm/_version.py``: commit ``ee0da84ab``),
the version veRL 0.9.1's ``vllm`` extra pins (``vllm==0.24.0``, with ``torch==2.11.0``, so it cannot be
installed next to this project's torch 2.13; the rules below were read from its source, not imported):

- ``vllm/model_executor/models/qwen2_5_omni_thinker.py`` — ``Qwen2_5OmniThinkerForConditionalGeneration``
  (vLLM's class for the ``Qwen2_5OmniModel`` / ``Qwen2_5OmniForConditionalGeneration`` architectures):
  ``hf_to_vllm_mapper`` prefixes, ``load_weights`` = ``AutoWeightsLoader(skip_prefixes=["talker.",
  "token2wav."])``; children ``audio_tower`` (transformers' own ``Qwen2_5OmniAudioEncoder``), ``visual``
  (``qwen2_5_vl.Qwen2_5_VisionTransformer.load_weights``), ``language_model`` (``qwen2.Qwen2ForCausalLM``).
- ``vllm/model_executor/models/qwen2_audio.py`` — ``Qwen2AudioForConditionalGeneration``: no mapper,
  ``AutoWeightsLoader(self)``; children ``audio_tower`` (transformers' ``Qwen2AudioEncoder``),
  ``multi_modal_projector`` (``linear``), ``language_model`` (``Qwen2ForCausalLM``).
- ``vllm/model_executor/models/qwen3_omni_moe_thinker.py`` — ``Qwen3OmniMoeThinkerForConditionalGeneration``
  (architecture ``Qwen3OmniMoeForConditionalGeneration``): the same mapper prefixes, skip prefixes
  ``talker.`` / ``code2wav.``; children ``audio_tower`` (vLLM's ``Qwen3OmniMoeAudioEncoder.load_weights``),
  ``visual`` (``Qwen3Omni_VisionTransformer.load_weights``), ``language_model`` (``Qwen3MoeLLMForCausalLM``:
  ``qwen3_moe.Qwen3MoeModel.load_weights`` with the FusedMoE expert mapping of
  ``layers/fused_moe/routed_experts.py``).
- ``vllm/model_executor/models/utils.py`` — ``WeightsMapper`` (every prefix rule is tried in order on the
  current name) and ``AutoWeightsLoader`` (skip prefixes / the rotary ``inv_freq`` substrings are skipped;
  a name whose module or parameter does not exist raises ``ValueError``).

How each loader treats a name, as vLLM does it (the ``LOADER_*`` kinds below):

- ``auto``: ``AutoWeightsLoader`` recursion into a module without its own ``load_weights``: an unknown name
  raises (the first weight sync fails);
- ``strict``: a ``load_weights`` that looks names up with ``params_dict[name]`` after its stacked
  (fused-parameter) renames: an unknown name raises ``KeyError``;
- ``lenient``: a ``load_weights`` that skips names it does not find (``if name not in params_dict:
  continue`` in ``Qwen2Model`` / ``Qwen3MoeModel``, ``params_dict.get`` in ``Qwen3OmniMoeAudioEncoder``):
  an unknown name is **dropped silently** and the rollout keeps serving the stale tensor. Their stacked
  branches differ: ``Qwen2Model``'s raises for a fused name it does not have (a ``.bias`` excepted),
  ``Qwen3OmniMoeAudioEncoder``'s raises, ``Qwen3MoeModel``'s skips; an expert name raises unless its expert
  id does not exist (then it is skipped).

vLLM's parameter names are derived from the real HF model class (:func:`vllm_parameters`): vLLM loads the
released checkpoints, whose names are the HF classes' own, so every vLLM parameter is an HF parameter
placed under vLLM's module path, with the fused parameters (``qkv_proj``, ``gate_up_proj``, ``attn.qkv``,
the MoE ``w13`` / ``w2`` expert tensors) named as the loaders' stacked mappings name them. A weight sync is
accepted when every name lands on a vLLM parameter (no name dropped or rejected) and every vLLM parameter,
every shard of a fused one included, receives a tensor (nothing left stale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

__all__ = [
    "FAMILIES",
    "LoadReport",
    "VllmModel",
    "simulate_load",
    "vllm_parameters",
]

LOADER_AUTO, LOADER_STRICT, LOADER_LENIENT = "auto", "strict", "lenient"
# Qwen2Model's stacked branch: params_dict[name] raises, except for a ".bias" it does not have (skipped)
LOADER_STRICT_BUT_BIAS = "strict (a missing .bias: skipped)"

# AutoWeightsLoader.ROTARY_EMBEDS_UNUSED_WEIGHTS: skipped wherever they appear
ROTARY_SUBSTRINGS = ("rotary_pos_emb.inv_freq", "rotary_emb.inv_freq", "rotary_emb.cos_cached",
                     "rotary_emb.sin_cached")

# (vLLM's fused parameter, the checkpoint name loaded into it, shard id), in the loaders' order
TEXT_STACKED = (("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
                ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1))
QWEN25_VISION_STACKED = (("attn.qkv.", "attn.q.", "q"), ("attn.qkv.", "attn.k.", "k"), ("attn.qkv.", "attn.v.", "v"),
                         ("mlp.gate_up_proj.", "mlp.gate_proj.", 0), ("mlp.gate_up_proj.", "mlp.up_proj.", 1))
QWEN3_VISION_STACKED = QWEN25_VISION_STACKED[:3]
QWEN3_AUDIO_STACKED = (("self_attn.qkv.", "self_attn.q_proj.", "q"), ("self_attn.qkv.", "self_attn.k_proj.", "k"),
                       ("self_attn.qkv.", "self_attn.v_proj.", "v"))

# FusedMoE (make_expert_params_mapping, routed_experts_prefix "routed_experts"): checkpoint
# "experts.{e}.{gate,up,down}_proj." loads into "experts.routed_experts.{w13,w2}_" with shard w1 / w3 / w2.
_EXPERT = re.compile(r"experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.")
_EXPERT_SHARD = {"gate_proj": ("w13_", "w1"), "up_proj": ("w13_", "w3"), "down_proj": ("w2_", "w2")}
# transformers 5 keeps a Qwen MoE layer's experts packed: "mlp.experts.gate_up_proj" [E, 2I, H], "down_proj" [E, H, I]
_PACKED_EXPERTS = re.compile(r"mlp\.experts\.(gate_up_proj|down_proj)$")


@dataclass(frozen=True)
class Part:
    """One child module of vLLM's model, where the HF class keeps it, and how vLLM loads its weights."""

    vllm_prefix: str
    hf_prefixes: tuple[str, ...]  # where the HF class keeps it (transformers versions differ: Qwen2-Audio)
    loader: str
    stacked: tuple = ()
    experts: bool = False  # Qwen3MoeModel: FusedMoE experts; its stacked loop skips names with "mlp.experts"
    stacked_loader: str | None = None  # how a stacked (fused) name is looked up, when not as ``loader``
    skip_when_tied: bool = False  # Qwen2ForCausalLM: AutoWeightsLoader(skip_prefixes=["lm_head."]) when tied


@dataclass(frozen=True)
class VllmModel:
    """A vLLM model class's ``load_weights``, paired with the HF class its parameters are derived from."""

    vllm_class: str
    source: str
    hf_class: str
    prefix_map: tuple[tuple[str, str], ...]
    skip_prefixes: tuple[str, ...]
    parts: tuple[Part, ...]

    def vllm_part(self, name: str) -> Part | None:
        """The part whose vLLM prefix is the longest one of ``name``."""
        matches = [p for p in self.parts if name.startswith(p.vllm_prefix)]
        return max(matches, key=lambda p: len(p.vllm_prefix), default=None)

    def hf_part(self, name: str) -> tuple[Part, str] | None:
        """``(part, HF prefix)`` for an HF parameter name, by the longest matching HF prefix."""
        matches = [(p, prefix) for p in self.parts for prefix in p.hf_prefixes if name.startswith(prefix)]
        return max(matches, key=lambda m: len(m[1]), default=None)


_THINKER_PREFIXES = (("thinker.lm_head.", "language_model.lm_head."), ("thinker.model.", "language_model.model."),
                     ("thinker.", ""))

QWEN25_OMNI = VllmModel(
    vllm_class="Qwen2_5OmniThinkerForConditionalGeneration",
    source="vllm/model_executor/models/qwen2_5_omni_thinker.py",
    hf_class="Qwen2_5OmniThinkerForConditionalGeneration",
    prefix_map=_THINKER_PREFIXES,
    skip_prefixes=("talker.", "token2wav."),
    parts=(
        Part("audio_tower.", ("audio_tower.",), LOADER_AUTO),
        Part("visual.", ("visual.",), LOADER_STRICT, QWEN25_VISION_STACKED),
        Part("language_model.model.", ("model.",), LOADER_LENIENT, TEXT_STACKED,
             stacked_loader=LOADER_STRICT_BUT_BIAS),
        Part("language_model.lm_head.", ("lm_head.",), LOADER_AUTO, skip_when_tied=True),
    ),
)

QWEN2_AUDIO = VllmModel(
    vllm_class="Qwen2AudioForConditionalGeneration",
    source="vllm/model_executor/models/qwen2_audio.py",
    hf_class="Qwen2AudioForConditionalGeneration",
    prefix_map=(),
    skip_prefixes=(),
    parts=(
        # transformers <= 5.9 keeps the checkpoint layout; 5.10 moved the modules under "model." (and "lm_head.")
        Part("audio_tower.", ("audio_tower.", "model.audio_tower."), LOADER_AUTO),
        Part("multi_modal_projector.", ("multi_modal_projector.", "model.multi_modal_projector."), LOADER_AUTO),
        Part("language_model.model.", ("language_model.model.", "model.language_model."), LOADER_LENIENT,
             TEXT_STACKED, stacked_loader=LOADER_STRICT_BUT_BIAS),
        Part("language_model.lm_head.", ("language_model.lm_head.", "lm_head."), LOADER_AUTO, skip_when_tied=True),
    ),
)

QWEN3_OMNI = VllmModel(
    vllm_class="Qwen3OmniMoeThinkerForConditionalGeneration",
    source="vllm/model_executor/models/qwen3_omni_moe_thinker.py",
    hf_class="Qwen3OmniMoeThinkerForConditionalGeneration",
    prefix_map=_THINKER_PREFIXES,
    skip_prefixes=("talker.", "code2wav."),
    parts=(
        # Qwen3OmniMoeAudioEncoder.load_weights: params_dict[name] for q/k/v, params_dict.get(name) otherwise
        Part("audio_tower.", ("audio_tower.",), LOADER_LENIENT, QWEN3_AUDIO_STACKED, stacked_loader=LOADER_STRICT),
        Part("visual.", ("visual.",), LOADER_STRICT, QWEN3_VISION_STACKED),
        Part("language_model.model.", ("model.",), LOADER_LENIENT, TEXT_STACKED, experts=True),
        Part("language_model.lm_head.", ("lm_head.",), LOADER_AUTO),
    ),
)

FAMILIES = {"qwen25_omni": QWEN25_OMNI, "qwen2_audio": QWEN2_AUDIO, "qwen3_omni": QWEN3_OMNI}


def _apply_prefix_map(model: VllmModel, name: str) -> str:
    for old, new in model.prefix_map:  # WeightsMapper._map_name: each rule in turn, on the current name
        if name.startswith(old):
            name = name.replace(old, new, 1)
    return name


def _stacked_target(part: Part, rel: str) -> tuple[str, object] | None:
    """``(vLLM name, shard)`` of a part-relative name by the part's stacked mapping, or None when none applies."""
    if part.experts and "mlp.experts" in rel:
        return None  # Qwen3MoeModel: "experts are handled below" — the stacked loop skips them
    for fused, shard_name, shard_id in part.stacked:
        if shard_name in rel:
            return rel.replace(shard_name, fused), shard_id  # str.replace: every occurrence, as vLLM does
    return None


def _expert_target(rel: str) -> tuple[str, object] | None:
    match = _EXPERT.search(rel)
    if match is None:
        return None
    fused, shard = _EXPERT_SHARD[match.group(2)]
    return rel.replace(match.group(0), f"experts.routed_experts.{fused}", 1), (int(match.group(1)), shard)


def vllm_parameters(model: VllmModel, hf_names: dict[str, tuple[int, ...]], *, tied: bool) -> dict[str, set]:
    """vLLM's parameters for an HF model's state dict (name -> shape): ``{vLLM name: shards it needs}``.

    A plain parameter needs ``{None}`` (one whole tensor); a fused one needs each of its shards (or one whole
    tensor). HF names no part holds raise: vLLM has no module for them.
    """
    params: dict[str, set] = {}
    for name, shape in hf_names.items():
        found = model.hf_part(name)
        if found is None:
            raise ValueError(f"{model.hf_class} parameter {name!r} has no place in vLLM's {model.vllm_class}")
        part, hf_prefix = found
        if part.skip_when_tied and tied:
            continue  # vLLM's lm_head is the embedding
        rel = name[len(hf_prefix):]
        packed = _PACKED_EXPERTS.search(rel) if part.experts else None
        if packed is not None:
            base = rel[: packed.start()] + "mlp.experts.routed_experts."
            shards = ("w1", "w3") if packed.group(1) == "gate_up_proj" else ("w2",)
            fused = "w13_weight" if packed.group(1) == "gate_up_proj" else "w2_weight"
            params.setdefault(part.vllm_prefix + base + fused, set()).update(
                (e, s) for e in range(shape[0]) for s in shards)
            continue
        target = (_expert_target(rel) if part.experts else None) or _stacked_target(part, rel)
        vllm_name, shard = target if target is not None else (rel, None)
        params.setdefault(part.vllm_prefix + vllm_name, set()).add(shard)
    return params


@dataclass
class LoadReport:
    """What vLLM's ``load_weights`` would do with each sent name."""

    loaded: dict[str, set] = field(default_factory=dict)  # vLLM name -> shards received
    skipped: dict[str, str] = field(default_factory=dict)  # sent name -> why vLLM skips it by design
    dropped: dict[str, str] = field(default_factory=dict)  # sent name -> vLLM name it looked for (silently ignored)
    rejected: dict[str, str] = field(default_factory=dict)  # sent name -> vLLM's error
    stale: dict[str, set] = field(default_factory=dict)  # vLLM name -> shards no sent name fills

    @property
    def problems(self) -> list[str]:
        return ([f"dropped silently: {n!r} (vLLM looked for {t!r})" for n, t in sorted(self.dropped.items())]
                + [f"rejected: {n!r} ({why})" for n, why in sorted(self.rejected.items())]
                + [f"never sent, stays stale: {n!r} {sorted(map(str, s))}" for n, s in sorted(self.stale.items())])


def simulate_load(model: VllmModel, sent: Iterable[str], params: dict[str, set], *, tied: bool) -> LoadReport:
    """Run ``sent`` names through ``model``'s mapper, skips and part loaders against vLLM's ``params``."""
    report = LoadReport()
    for name in sent:
        mapped = _apply_prefix_map(model, name)
        skip = next((p for p in model.skip_prefixes if mapped.startswith(p)), None)
        skip = skip or next((s for s in ROTARY_SUBSTRINGS if s in mapped), None)
        if skip is not None:
            report.skipped[name] = f"vLLM skips {skip!r}"
            continue
        part = model.vllm_part(mapped)
        if part is None:
            report.rejected[name] = f"{model.vllm_class} has no module for {mapped!r}"
            continue
        rel = mapped[len(part.vllm_prefix):]
        if part.skip_when_tied and tied:
            report.skipped[name] = "tied lm_head (vLLM skips 'lm_head.')"
            continue
        expert = _expert_target(rel) if part.experts else None
        stacked = None if expert is not None else _stacked_target(part, rel)
        vllm_rel, shard = expert or stacked or (rel, None)
        vllm_name = part.vllm_prefix + vllm_rel
        if expert is not None and vllm_name in params and shard not in params[vllm_name]:
            # an expert id the layer does not have: no expert mapping matches, the plain lookup skips it
            report.dropped[name] = f"{vllm_name} expert {shard[0]}"
            continue
        if vllm_name not in params:
            loader = LOADER_STRICT if expert is not None else (part.stacked_loader if stacked is not None else None)
            loader = loader or part.loader
            if loader == LOADER_STRICT_BUT_BIAS:
                loader = LOADER_LENIENT if vllm_name.endswith(".bias") else LOADER_STRICT
            if loader == LOADER_LENIENT:
                report.dropped[name] = vllm_name
            else:
                report.rejected[name] = f"no parameter {vllm_name!r} ({loader} loader raises)"
            continue
        report.loaded.setdefault(vllm_name, set()).add(shard)
    for vllm_name, needed in params.items():
        got = report.loaded.get(vllm_name, set())
        if None not in got and not needed <= got:
            report.stale[vllm_name] = needed - got
    return report
