"""MAPO's hyper-parameters as a veRL policy-loss config (docs/DESIGN.md, "Parity with the authors' release").

veRL builds ``actor_rollout_ref.actor.policy_loss`` from its ``_target_``; its own
``PolicyLossConfig`` rejects unknown keys, so MAPO subclasses it and adds one nested
section, ``mapo``. The trainer (ablated pass, ω̃, ν̃) and the actor engines (attention
loss) both read this one object, so a hyper-parameter has exactly one home.

Every value is validated at construction; an error names the full config key and the
allowed range. Defaults are the authors' *launcher* values (docs/DESIGN.md, parity table); the hyper-parameters
that veRL already owns (β, group size, learning rate, sampling) are listed in
:data:`AUTHORS_VERL_SETTINGS` with the veRL key that holds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from verl.base_config import BaseConfig
from verl.workers.config import PolicyLossConfig

from mapo_verl.core.contract import ABLATION_MODES, CONFIG_PREFIX, HEAD_REDUCTIONS, LAYER_REDUCTIONS, MODALITY_SCOPES
from mapo_verl.modalities import MODALITIES, VISUAL_ABLATION_MODES

__all__ = [
    "POS_CONTENT_TAGS",
    "TOTAL_SCORE_KEY",
    "AttentionLossConfig",
    "POSGateConfig",
    "MAPOConfig",
    "MAPOPolicyLossConfig",
    "AUTHORS_VERL_SETTINGS",
    "mapo_config_from",
]

POS_CONTENT_TAGS = ("NOUN", "VERB", "ADJ", "ADV", "NUM", "X")
# task_reward_key value that marks failures by the total score (explicit opt-in)
TOTAL_SCORE_KEY = "score"
_UNIVERSAL_TAGS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
                   "PUNCT", "SCONJ", "SYM", "VERB", "X", "CONJ", "PRT", "."}

# Hyper-parameters of the method that veRL itself owns: key -> the authors' launcher value.
AUTHORS_VERL_SETTINGS: dict[str, Any] = {
    "algorithm.adv_estimator": "mapo",
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.02,  # β
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",  # k3: exp(r−ℓ) − (r−ℓ) − 1
    "actor_rollout_ref.rollout.n": 8,  # group size G
    "data.max_response_length": 1200,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.05,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 0.99,
    "actor_rollout_ref.rollout.top_k": 50,
    "actor_rollout_ref.rollout.repetition_penalty": 1.2,  # applied by mapo_verl.patches.agent_loop
}


def _key(section: str, name: str) -> str:
    return f"{CONFIG_PREFIX}{section}.{name}"


def _require(condition: bool, section: str, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{_key(section, name)} must be {allowed}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coerce(section_cls: type, value: Any) -> Any:
    """Hydra leaves nested sections without ``_target_`` as dicts: build the dataclass."""
    if isinstance(value, section_cls):
        return value
    if isinstance(value, dict) or hasattr(value, "keys"):
        known = {f.name for f in fields(section_cls)}
        given = dict(value)
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {section_cls.SECTION_KEY}; allowed: {sorted(known - {'_target_'})}")
        return section_cls(**given)
    raise TypeError(f"{section_cls.SECTION_KEY} must be a mapping, got {type(value).__name__}")


@dataclass
class AttentionLossConfig(BaseConfig):
    """The attention-loss branch (docs/DESIGN.md, "The attention branch").

    Args:
        coef: η, the loss weight (0 turns the branch off; the hooks are then not installed).
        layers: decoder layers whose attention is penalised; negative indices count from
            the end (``[-3, -2, -1]`` = the last three, as the authors' launcher).
        head_reduce: reduce the per-head audio mass with ``max`` or ``mean``.
        layer_reduce: reduce over the chosen layers with ``mean`` or ``max``.
        kappa: κ ≥ 1, the temporal exponent of ``(t/T)^κ``.
        eps: ε > 0 in ``−log(a + ε)``.
        advantage_floor_eps: floor of ``|Â|`` for failed responses.
        fail_floor: floor of the failure gate ``f̂ = max(fail, floor)``, in [0, 1].
        pref_cap: C_pref, cap of the preference gate (0 = no cap).
        include_audio_markers: count the audio start/end marker tokens (``audio_start_token_id`` /
            ``audio_end_token_id`` of the model config, where it has them) as audio keys besides
            the audio placeholders, as the authors' release does.
    """

    SECTION_KEY = f"{CONFIG_PREFIX}.attention"

    coef: float = 0.05
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])
    head_reduce: str = "max"
    layer_reduce: str = "mean"
    kappa: float = 1.0
    eps: float = 1e-6
    advantage_floor_eps: float = 0.02
    fail_floor: float = 0.1
    pref_cap: float = 3.0
    include_audio_markers: bool = True

    def __post_init__(self):
        s = ".attention"
        _require(_is_number(self.coef) and self.coef >= 0, s, "coef", "a finite number >= 0 (η)", self.coef)
        layers = list(self.layers)
        _require(len(layers) > 0 and all(isinstance(i, int) and not isinstance(i, bool) for i in layers), s,
                 "layers", "a non-empty list of layer indices (negative counts from the end)", self.layers)
        _require(len(set(layers)) == len(layers), s, "layers", "a list without repeated indices", self.layers)
        _require(self.head_reduce in HEAD_REDUCTIONS, s, "head_reduce", f"one of {list(HEAD_REDUCTIONS)}",
                 self.head_reduce)
        _require(self.layer_reduce in LAYER_REDUCTIONS, s, "layer_reduce", f"one of {list(LAYER_REDUCTIONS)}",
                 self.layer_reduce)
        _require(_is_number(self.kappa) and self.kappa >= 1, s, "kappa", "a finite number >= 1 (κ)", self.kappa)
        _require(_is_number(self.eps) and 0 < self.eps < 1, s, "eps", "in (0, 1) (ε)", self.eps)
        _require(_is_number(self.advantage_floor_eps) and self.advantage_floor_eps >= 0, s,
                 "advantage_floor_eps", "a finite number >= 0", self.advantage_floor_eps)
        _require(_is_number(self.fail_floor) and 0 <= self.fail_floor <= 1, s, "fail_floor", "in [0, 1]",
                 self.fail_floor)
        _require(_is_number(self.pref_cap) and self.pref_cap >= 0, s, "pref_cap",
                 "a finite number >= 0 (C_pref, 0 = no cap)", self.pref_cap)
        _require(isinstance(self.include_audio_markers, bool), s, "include_audio_markers", "true or false",
                 self.include_audio_markers)

    @property
    def enabled(self) -> bool:
        return self.coef > 0


@dataclass
class POSGateConfig(BaseConfig):
    """Part-of-speech gate over response tokens (docs/DESIGN.md, "Part-of-speech gate").

    Args:
        enable: gate the attention loss to content words; ``False`` gates every token.
        tags: universal POS tags that pass the gate.
        tagger: ``auto`` (NLTK with its tagger data present — the authors' tagger, Penn tags
            mapped to coarse ones —, else spaCy with an installed English model, else the
            built-in lexicon), ``nltk``, ``spacy``, ``lexicon``.
        empty_fallback: a response none of whose tokens passes the gate is gated all ones
            (the release's rule; a response whose tagging fails is always gated all ones).
    """

    SECTION_KEY = f"{CONFIG_PREFIX}.pos_gate"

    enable: bool = True
    tags: list[str] = field(default_factory=lambda: list(POS_CONTENT_TAGS))
    tagger: str = "auto"
    empty_fallback: bool = True

    def __post_init__(self):
        s = ".pos_gate"
        _require(isinstance(self.enable, bool), s, "enable", "true or false", self.enable)
        tags = list(self.tags)
        _require(len(tags) > 0 and set(tags) <= _UNIVERSAL_TAGS, s, "tags",
                 f"a non-empty list of universal POS tags {sorted(_UNIVERSAL_TAGS)}", self.tags)
        _require(self.tagger in ("auto", "spacy", "nltk", "lexicon"), s, "tagger",
                 "one of ['auto', 'spacy', 'nltk', 'lexicon']", self.tagger)
        _require(isinstance(self.empty_fallback, bool), s, "empty_fallback", "true or false", self.empty_fallback)


@dataclass
class MAPOConfig(BaseConfig):
    """MAPO's own hyper-parameters (authors' launcher defaults, docs/DESIGN.md parity table).

    Args:
        tau_base: τ_base > 0 of the length-scaled temperature τ_T = τ_base·log(max(T, 2)).
        mask_cap: C_mask, cap of ω̃ and ν̃: a number >= 1, or 0 for no cap.
        modalities: the non-text modalities MAPO acts on (docs/DESIGN.md, "Beyond audio"): the
            ablated pass removes each of them, and the attention loss counts their placeholder (and
            marker) tokens as keys. ``[audio]`` (the method's) by default; ``image`` and ``video``
            for vision-language models.
        ablation: how the modalities are removed for the reference pass: ``drop`` (drop the
            features, keep the placeholder tokens — as the authors), ``zero`` (silent / black
            features), ``noise`` (Gaussian features of the same per-sample scale); without audio
            also ``patch_mask`` (a random half of the image patches blackened).
        ablation_reference: ``ref`` (the frozen reference, as the authors) or ``policy``
            (the current weights).
        text_ref_model: an HF model path whose entropies on the audio-ablated batch give H_abl
            instead of the frozen reference's (the release's ``text_ref_model``; unset by
            default): the actor's architecture and tokenizer, checked at launch
            (:mod:`mapo_verl.verl_ext.text_reference`). Needs ``ablation_reference=ref``.
        noise_scale: standard deviation of ``noise`` features, relative to each sample's
            feature standard deviation.
        text_only_modality_scope: what the ablated pass removes: ``audio`` (the audio inputs
            only, as the authors' default) or ``all`` (every non-text modality: audio, images,
            video).
        attention_only: train on ``η·L_attn`` alone: the policy-gradient term is kept at zero
            weight (its advantages are zeroed, so loss and gradient are exactly 0) — the
            release's ablation switch; needs ``attention.coef > 0`` and no KL / entropy loss.
        task_reward_key: the reward-extra-info key of the task (accuracy) reward whose
            value ≤ 0 marks a failed response; a response without it is an error at the
            first step. ``score`` (:data:`TOTAL_SCORE_KEY`) opts in to the total score.
        pos_gate: :class:`POSGateConfig`.
        attention: :class:`AttentionLossConfig`.
    """

    SECTION_KEY = CONFIG_PREFIX

    tau_base: float = 1.0
    mask_cap: float = 5.0
    modalities: list[str] = field(default_factory=lambda: ["audio"])
    ablation: str = "drop"
    ablation_reference: str = "ref"
    text_ref_model: str | None = None
    noise_scale: float = 1.0
    text_only_modality_scope: str = "audio"
    attention_only: bool = False
    task_reward_key: str = "acc"
    pos_gate: POSGateConfig = field(default_factory=POSGateConfig)
    attention: AttentionLossConfig = field(default_factory=AttentionLossConfig)

    def __post_init__(self):
        _require(_is_number(self.tau_base) and self.tau_base > 0, "", "tau_base", "a finite number > 0 (τ_base)",
                 self.tau_base)
        _require(_is_number(self.mask_cap) and (self.mask_cap >= 1 or self.mask_cap == 0), "", "mask_cap",
                 "a number >= 1, or 0 for no cap (C_mask)", self.mask_cap)
        scalar = self.modalities is None or isinstance(self.modalities, (str, int, float))
        names = None if scalar else list(self.modalities)
        _require(bool(names) and all(name in MODALITIES for name in names) and len(set(names)) == len(names), "",
                 "modalities", f"a non-empty list of distinct names from {sorted(MODALITIES)}", self.modalities)
        object.__setattr__(self, "modalities", names)
        modes = ABLATION_MODES if "audio" in names else VISUAL_ABLATION_MODES
        _require(self.ablation in modes, "", "ablation", f"one of {list(modes)} for modalities {names}",
                 self.ablation)
        _require(self.ablation_reference in ("ref", "policy"), "", "ablation_reference", "one of ['ref', 'policy']",
                 self.ablation_reference)
        _require(self.text_ref_model is None or (isinstance(self.text_ref_model, str) and self.text_ref_model != ""),
                 "", "text_ref_model", "unset (null) or a model path", self.text_ref_model)
        _require(self.text_ref_model is None or self.ablation_reference == "ref", "", "ablation_reference",
                 "ref when text_ref_model is set (the text reference replaces the frozen reference)",
                 self.ablation_reference)
        _require(_is_number(self.noise_scale) and self.noise_scale > 0, "", "noise_scale", "a finite number > 0",
                 self.noise_scale)
        _require(isinstance(self.task_reward_key, str) and self.task_reward_key != "", "", "task_reward_key",
                 "a non-empty string", self.task_reward_key)
        _require(self.text_only_modality_scope in MODALITY_SCOPES, "", "text_only_modality_scope",
                 f"one of {list(MODALITY_SCOPES)}", self.text_only_modality_scope)
        _require(isinstance(self.attention_only, bool), "", "attention_only", "true or false", self.attention_only)
        object.__setattr__(self, "pos_gate", _coerce(POSGateConfig, self.pos_gate))
        object.__setattr__(self, "attention", _coerce(AttentionLossConfig, self.attention))
        _require(not self.attention_only or self.attention.enabled, "", "attention_only",
                 "false when attention.coef is 0 (nothing would be trained)", self.attention_only)


@dataclass
class MAPOPolicyLossConfig(PolicyLossConfig):
    """veRL's ``PolicyLossConfig`` plus the ``mapo`` section.

    Select it with ``actor_rollout_ref.actor.policy_loss._target_=mapo_verl.config.MAPOPolicyLossConfig``
    (the MAPO recipes do). The policy-loss mode stays veRL's ``vanilla``: ω̃ enters through
    the advantages (:func:`mapo_verl.core.fold_relevance_into_advantages`).
    """

    mapo: MAPOConfig = field(default_factory=MAPOConfig)

    def __post_init__(self):
        object.__setattr__(self, "mapo", _coerce(MAPOConfig, self.mapo))


def mapo_config_from(config: Any) -> MAPOConfig:
    """The :class:`MAPOConfig` of a trainer config, an actor config or a policy-loss config.

    Accepts OmegaConf nodes or veRL dataclasses; raises a ``ValueError`` naming the key to
    set when the config has no MAPO section.
    """
    node = config
    for key in ("actor_rollout_ref", "actor", "policy_loss"):
        child = node.get(key) if hasattr(node, "get") else None
        if child is not None:
            node = child
    section = node.get("mapo") if hasattr(node, "get") else None
    if section is None:
        raise ValueError(
            f"{CONFIG_PREFIX} is missing: set actor_rollout_ref.actor.policy_loss._target_="
            "mapo_verl.config.MAPOPolicyLossConfig (the MAPO recipes in recipes/ do)"
        )
    if isinstance(section, MAPOConfig):
        return section
    if hasattr(section, "_metadata"):  # an OmegaConf node
        from omegaconf import OmegaConf

        section = OmegaConf.to_container(section, resolve=True)
    return _coerce(MAPOConfig, section)
