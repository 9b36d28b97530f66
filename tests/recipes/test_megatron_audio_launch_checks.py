"""Settings Megatron-Bridge's audio models cannot run fail before Ray starts, naming the key.

The model is recognised from its HF config (``thinker_config`` for the Omni models, whose top-level config
has no ``vision_config``; ``model_type`` for Qwen2-Audio), read from ``actor_rollout_ref.model.path`` when
it is on this machine.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mapo_verl.verl_ext.recipe_checks import check_launch_consistency, megatron_audio_model_problems

from tests.recipes.conftest import RECIPES

pytestmark = pytest.mark.filterwarnings("ignore")


def _configs():
    from transformers import Qwen2_5OmniConfig, Qwen2AudioConfig, Qwen2Config

    return {"omni": Qwen2_5OmniConfig(), "qwen2_audio": Qwen2AudioConfig(), "text": Qwen2Config()}


def _trainer(**megatron) -> OmegaConf:
    section = {"use_remove_padding": False, "context_parallel_size": 1, "dynamic_context_parallel": False,
               **megatron}
    return OmegaConf.create({"actor_rollout_ref": {
        "actor": {"strategy": "megatron", "megatron": dict(section)},
        "ref": {"strategy": "megatron", "megatron": dict(section)}},
        "algorithm": {"adv_estimator": "mapo"}})


@pytest.mark.parametrize("model", ["omni", "qwen2_audio"])
def test_a_grpo_twin_on_megatron_must_select_mapo_s_engine(model, monkeypatch):
    """veRL's own Megatron forward drops audio inputs: without MAPO's estimator (whose worker selects MAPO's
    engines itself) the run must set VERL_ENGINE_VENDOR=mapo, or it would train on placeholders without audio."""
    monkeypatch.delenv("VERL_ENGINE_VENDOR", raising=False)
    key = "ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR"
    grpo = _trainer()
    grpo.algorithm.adv_estimator = "grpo"
    problems = megatron_audio_model_problems(grpo, _configs()[model])
    assert len(problems) == 1 and key in problems[0] and "silently dropped" in problems[0], problems
    assert megatron_audio_model_problems(grpo, _configs()["text"]) == []  # a text model loses nothing
    assert megatron_audio_model_problems(_trainer(), _configs()[model]) == []  # MAPO's worker selects it
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "mapo")  # set in the launching shell: Ray workers inherit it
    assert megatron_audio_model_problems(grpo, _configs()[model]) == []
    monkeypatch.delenv("VERL_ENGINE_VENDOR")
    OmegaConf.update(grpo, key, "mapo", force_add=True)
    assert megatron_audio_model_problems(grpo, _configs()[model]) == []


def test_good_settings_pass_for_every_audio_model():
    for hf_config in _configs().values():
        assert megatron_audio_model_problems(_trainer(), hf_config) == []


@pytest.mark.parametrize("model, setting, key", [
    ("omni", {"use_remove_padding": True}, "actor_rollout_ref.actor.megatron.use_remove_padding"),
    ("omni", {"context_parallel_size": 2}, "actor_rollout_ref.actor.megatron.context_parallel_size"),
    ("qwen2_audio", {"context_parallel_size": 2}, "actor_rollout_ref.ref.megatron.context_parallel_size"),
    ("omni", {"dynamic_context_parallel": True}, "actor_rollout_ref.actor.megatron.dynamic_context_parallel"),
])
def test_unsupported_settings_are_named(model, setting, key):
    problems = megatron_audio_model_problems(_trainer(**setting), _configs()[model])
    assert any(key in problem for problem in problems), problems
    assert all(type(_configs()[model]).__name__ in problem for problem in problems)


def test_packing_is_refused_only_for_the_omni_thinkers_and_other_models_are_left_alone():
    configs = _configs()
    assert megatron_audio_model_problems(_trainer(use_remove_padding=True), configs["qwen2_audio"]) == []
    assert megatron_audio_model_problems(_trainer(context_parallel_size=4, use_remove_padding=True),
                                         configs["text"]) == []
    fsdp = _trainer(use_remove_padding=True)
    fsdp.actor_rollout_ref.actor.strategy = fsdp.actor_rollout_ref.ref.strategy = "fsdp2"
    assert megatron_audio_model_problems(fsdp, configs["omni"]) == []
    assert megatron_audio_model_problems(_trainer(use_remove_padding=True), None) == []  # config not on disk


def test_the_7b_recipe_with_packing_fails_at_launch_naming_the_key(tmp_path):
    """The real recipe, its model path pointing at a (tiny) Qwen2.5-Omni config on disk."""
    from hydra import compose, initialize_config_dir
    from transformers import Qwen2_5OmniConfig

    Qwen2_5OmniConfig().save_pretrained(tmp_path)
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        good = compose(config_name="grpo_qwen25_omni_7b_megatron",
                       overrides=[f"actor_rollout_ref.model.path={tmp_path}"])
        bad = compose(config_name="grpo_qwen25_omni_7b_megatron",
                      overrides=[f"actor_rollout_ref.model.path={tmp_path}",
                                 "actor_rollout_ref.actor.megatron.use_remove_padding=true"])
    check_launch_consistency(good)
    with pytest.raises(ValueError, match=r"actor_rollout_ref.actor.megatron.use_remove_padding=false"):
        check_launch_consistency(bad)
