"""Do the names veRL's FSDP engine sends at weight sync reach vLLM's parameters? (Python 3.11 lane)

vLLM cannot be installed here (veRL 0.9.1 pins vllm 0.24.0, which pins torch 2.11.0; this project runs torch
2.13), so the check runs vLLM 0.24.0's loading rules as ``vllm_loaders.py`` writes them down from vLLM's
source (file and commit in its docstring), against vLLM parameter names derived from the real transformers
classes (tiny random configs, built on the meta device: only names and shapes matter).

The names under test are the ones veRL 0.9.1's FSDP engine yields from ``get_per_tensor_param``: the module's
``state_dict()``, then ``verl.utils.model.convert_weight_keys`` (reverts ``_checkpoint_conversion_mapping``,
which transformers 5 classes no longer carry) and ``verl.workers.engine.fsdp.utils.unfuse_moe_params``
(transformers 5's packed MoE experts back to per-expert names). FSDP2's ``fully_shard`` adds no name prefix,
so the unwrapped module's state dict has the same names.

Finding (transformers 5.10 / veRL 0.9.1 / vLLM 0.24.0): none of the three models' module names load into vLLM.
The Omni thinkers' names lack the ``thinker.`` prefix that vLLM's Omni classes map from (vLLM serves the Omni
architectures with its thinker class, whose children are ``audio_tower``, ``visual``, ``language_model``:
``model.*`` and ``lm_head.*`` have no module and ``load_weights`` raises); under transformers 5.10 Qwen2-Audio's
names (``model.language_model.*``, ``model.audio_tower.*``, ``lm_head.*``) are not the checkpoint layout
vLLM's ``Qwen2AudioForConditionalGeneration`` loads, and it has no mapper. ``mapo_verl.patches.checkpoint_names``
maps them back to the checkpoint's names at sync; the tests below check the patched names load completely and
pin that veRL's own names would not.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.weights.vllm_loaders import FAMILIES, simulate_load, vllm_parameters

VOCAB = 64
_AUDIO = dict(num_mel_bins=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16)
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
_ROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])


def _thinker_config(family: str, tied: bool):
    if family == "qwen25_omni":
        return transformers.Qwen2_5OmniThinkerConfig(
            audio_config=dict(_AUDIO, output_dim=32, n_window=8, max_source_positions=64),
            vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                               fullatt_block_indexes=[1], spatial_merge_size=1),
            text_config=dict(_TEXT, rope_parameters=_ROPE, tie_word_embeddings=tied))
    return transformers.Qwen3OmniMoeThinkerConfig(
        audio_config=dict(_AUDIO, output_dim=32, n_window=50, max_source_positions=64, downsample_hidden_size=8),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           spatial_merge_size=1, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        text_config=dict(_TEXT, head_dim=8, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                         rope_parameters=_ROPE))


def _qwen2_audio_config(tied: bool):
    return transformers.Qwen2AudioConfig(audio_config=dict(_AUDIO, max_source_positions=20),
                                         text_config=dict(_TEXT, model_type="qwen2", tie_word_embeddings=tied))


def _on_meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def actor_model(family: str, tied: bool = False) -> torch.nn.Module:
    """The class veRL's FSDP engine builds for the family (the thinker for the Omni models)."""
    if family == "qwen2_audio":
        return _on_meta(transformers.Qwen2AudioForConditionalGeneration, _qwen2_audio_config(tied))
    cls = {"qwen25_omni": transformers.Qwen2_5OmniThinkerForConditionalGeneration,
           "qwen3_omni": transformers.Qwen3OmniMoeThinkerForConditionalGeneration}[family]
    return _on_meta(cls, _thinker_config(family, tied))


def is_tied(model: torch.nn.Module) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def verl_module_names(model: torch.nn.Module) -> list[str]:
    """The names veRL 0.9.1's ``FSDPEngine.get_per_tensor_param`` yields for ``model`` (its own functions)."""
    from verl.utils.model import convert_weight_keys
    from verl.workers.engine.fsdp.utils import unfuse_moe_params

    params = convert_weight_keys(model.state_dict(), model)
    return [name for name, _ in unfuse_moe_params(params.items(), model.config.model_type)]


def checkpoint_config(family: str, model: torch.nn.Module):
    """The config of the checkpoint vLLM serves the family from: the full Omni model, or Qwen2-Audio itself."""
    if family == "qwen25_omni":
        return transformers.Qwen2_5OmniConfig(thinker_config=model.config.to_dict())
    if family == "qwen3_omni":
        return transformers.Qwen3OmniMoeConfig(thinker_config=model.config.to_dict())
    return model.config


def fsdp_sync_names(family: str, model: torch.nn.Module) -> list[str]:
    """The names the patched engine sends: veRL's, through the checkpoint-name rule of the served checkpoint."""
    from mapo_verl.patches.checkpoint_names import checkpoint_name_rule

    rule = checkpoint_name_rule(checkpoint_config(family, model))
    assert rule is not None, family
    return [rule(name) for name in verl_module_names(model)]


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def checkpoint_names(family: str, model: torch.nn.Module) -> list[str]:
    """The released checkpoints' layout, which vLLM's loaders are written for (built independently of them).

    Qwen2.5-Omni: the full ``Qwen2_5OmniForConditionalGeneration`` (thinker under ``thinker.``, plus ``talker.``
    and ``token2wav.``). Qwen3-Omni: the thinker's names under ``thinker.`` (its full class, which nests the
    thinker the same way, does not build from a default talker config in transformers 5.10). Qwen2-Audio: the
    transformers-5 names mapped back through transformers' own ``qwen2_audio`` checkpoint renamings.
    """
    if family == "qwen25_omni":
        config = transformers.Qwen2_5OmniConfig(thinker_config=model.config.to_dict())
        return list(_on_meta(transformers.Qwen2_5OmniForConditionalGeneration, config).state_dict())
    names = verl_module_names(model)
    if family == "qwen3_omni":
        return ["thinker." + name for name in names]
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    renamings = [(r.target_patterns[0], r.source_patterns[0].lstrip("^"))
                 for r in get_checkpoint_conversion_mapping("qwen2_audio")]
    out = []
    for name in names:
        new, old = next(((n, o) for n, o in renamings if name.startswith(n + ".")), (None, None))
        out.append(name if new is None else old + name[len(new):])
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_checkpoint_layout_loads_completely(family, tied):
    """The layout vLLM is written for passes the rules: every name lands, every vLLM parameter is filled."""
    if family == "qwen3_omni" and tied:
        pytest.skip("Qwen3-Omni thinkers are untied (the text config has no tie_word_embeddings)")
    model = actor_model(family, tied)
    rules = FAMILIES[family]
    report = simulate_load(rules, checkpoint_names(family, model),
                           vllm_parameters(rules, shapes(model), tied=is_tied(model)), tied=is_tied(model))
    assert report.problems == []
    assert report.loaded
    # skipped by vLLM's design only: the talker / code-to-wave modules, and a tied lm_head
    assert all(n.startswith(("talker.", "token2wav.")) or (tied and "lm_head" in n) for n in report.skipped)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_fsdp_sync_names_load_into_vllm(family, tied):
    """Every name the patched sync sends lands in a vLLM parameter, and every vLLM parameter is filled."""
    if family == "qwen3_omni" and tied:
        pytest.skip("Qwen3-Omni thinkers are untied (the text config has no tie_word_embeddings)")
    model = actor_model(family, tied)
    rules = FAMILIES[family]
    params = vllm_parameters(rules, shapes(model), tied=is_tied(model))
    report = simulate_load(rules, fsdp_sync_names(family, model), params, tied=is_tied(model))
    assert report.problems == [], "\n".join(report.problems[:12])
    assert report.loaded
    assert all(tied and "lm_head" in name for name in report.skipped)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_verls_own_sync_names_are_rejected_at_the_language_model_root(family):
    """Pins why the patch exists: veRL's names under the HF language-model roots are rejected, loudly."""
    model = actor_model(family)
    rules = FAMILIES[family]
    sent = verl_module_names(model)
    report = simulate_load(rules, sent, vllm_parameters(rules, shapes(model), tied=False), tied=False)
    roots = ("model.", "lm_head.")
    assert sorted(report.rejected) == sorted(n for n in sent if n.startswith(roots))
    assert report.dropped == {}


# --------------------------------------------------------------------------- the checker catches
def _check(family: str, edit) -> tuple:
    model = actor_model(family)
    rules = FAMILIES[family]
    names = edit(checkpoint_names(family, model))
    return simulate_load(rules, names, vllm_parameters(rules, shapes(model), tied=False), tied=False)


def _replace(old: str, new: str):
    def edit(names):
        assert old in names, old
        return [new if n == old else n for n in names]
    return edit


@pytest.mark.parametrize("family, old, new", [
    # the thinker prefix missing on one language-model tensor, or doubled
    ("qwen25_omni", "thinker.model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight"),
    ("qwen3_omni", "thinker.lm_head.weight", "thinker.thinker.lm_head.weight"),
    # Qwen2-Audio's transformers-5 placement of one tensor
    ("qwen2_audio", "language_model.model.norm.weight", "model.language_model.norm.weight"),
    # an audio-tower tensor fused where vLLM uses transformers' encoder (q/k/v separate, no stacked mapping)
    ("qwen25_omni", "thinker.audio_tower.layers.0.self_attn.q_proj.weight",
     "thinker.audio_tower.layers.0.self_attn.qkv.weight"),
    # already fused (a vLLM-style name): Qwen2Model's stacked rename makes "gate_gate_up_proj", a KeyError
    ("qwen25_omni", "thinker.model.layers.0.mlp.up_proj.weight", "thinker.model.layers.0.mlp.gate_up_proj.weight"),
])
def test_a_wrong_prefix_or_module_is_rejected_and_leaves_its_parameter_stale(family, old, new):
    report = _check(family, _replace(old, new))
    assert list(report.rejected) == [new]
    assert len(report.stale) == 1


@pytest.mark.parametrize("family, old, new", [
    # Megatron-style names: Qwen2Model skips names it does not have
    ("qwen25_omni", "thinker.model.layers.0.mlp.down_proj.weight", "thinker.model.layers.0.mlp.linear_fc2.weight"),
    ("qwen2_audio", "language_model.model.layers.1.self_attn.o_proj.weight",
     "language_model.model.layers.1.self_attention.linear_proj.weight"),
    # Qwen3-Omni's audio encoder looks plain names up with params_dict.get
    ("qwen3_omni", "thinker.audio_tower.proj1.weight", "thinker.audio_tower.proj_1.weight"),
    # an expert id the layer does not have (4 experts): no FusedMoE mapping matches it
    ("qwen3_omni", "thinker.model.layers.1.mlp.experts.3.up_proj.weight",
     "thinker.model.layers.1.mlp.experts.7.up_proj.weight"),
])
def test_a_name_vllm_would_drop_silently_fails(family, old, new):
    report = _check(family, _replace(old, new))
    assert list(report.dropped) == [new]
    assert report.rejected == {}
    assert len(report.stale) == 1  # the tensor it should have filled keeps its old value


def test_packed_moe_experts_would_be_dropped_without_verls_unfusing():
    """transformers 5's packed ``mlp.experts.gate_up_proj`` match no FusedMoE expert name: Qwen3MoeModel skips
    them silently, which is why veRL's FSDP engine unfuses them per expert."""
    model = actor_model("qwen3_omni")
    packed = ["thinker." + name for name in model.state_dict()]
    rules = FAMILIES["qwen3_omni"]
    report = simulate_load(rules, packed, vllm_parameters(rules, shapes(model), tied=False), tied=False)
    assert sorted(report.dropped) == sorted(n for n in packed if n.endswith(("experts.gate_up_proj",
                                                                             "experts.down_proj")))
    assert all("routed_experts" in name for name in report.stale)


def test_a_missing_shard_of_a_fused_parameter_is_stale():
    name = "thinker.model.layers.0.self_attn.k_proj.weight"
    report = _check("qwen25_omni", lambda names: [n for n in names if n != name])
    assert report.stale == {"language_model.model.layers.0.self_attn.qkv_proj.weight": {"k"}}
