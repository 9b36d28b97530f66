"""The Qwen2.5-VL-7B recipe and its GRPO twin: they compose with veRL's ppo_trainer, pass veRL's and
MAPO's launch checks, MAPO acts on images, and the twins differ only in the MAPO part."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mapo_verl.verl_ext.recipe_checks import launch_problems
from tests.recipes.conftest import RECIPES
from tests.recipes.test_recipes import MAPO_SECTION, MAPO_SWITCHES, SPEC_MAPO_VALUES, composed, flat

VL_RECIPES = ("mapo_qwen25_vl_7b_fsdp", "grpo_qwen25_vl_7b_fsdp")


@pytest.fixture(scope="module")
def configs():
    import verl  # noqa: F401  (loads the MAPO plugin, as main_ppo does)

    return {name: composed(name) for name in VL_RECIPES}


def test_the_vision_recipes_are_the_ones_in_recipes():
    assert {p.stem for p in RECIPES.glob("*_vl_*.yaml") if "tiny" not in p.stem} == set(VL_RECIPES)


@pytest.mark.parametrize("name", VL_RECIPES)
def test_vl_recipe_composes_and_passes_the_launch_checks(configs, name):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    config = configs[name]
    assert config.actor_rollout_ref.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    assert config.actor_rollout_ref.actor.strategy == "fsdp2" and config.trainer.experiment_name == name
    assert config.data.image_key == "images"
    assert OmegaConf.to_container(config.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt) == {
        "image": 1, "video": 0}
    assert launch_problems(config) == []
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    if name.startswith("mapo_"):
        assert config.algorithm.adv_estimator == "mapo" and config.trainer.v1.trainer_mode == "mapo"
        assert actor.policy_loss.mapo.modalities == ["image"]
        assert actor.policy_loss.mapo.task_reward_key == "score"
        for key, value in SPEC_MAPO_VALUES.items():  # the authors' values, except the task reward's key
            if not key.endswith("task_reward_key"):
                assert OmegaConf.select(config, key) == pytest.approx(value), key
    else:
        assert config.algorithm.adv_estimator == "grpo" and "mapo" not in config.actor_rollout_ref.actor.policy_loss


def test_vl_twins_differ_only_in_the_mapo_part(configs):
    mapo, grpo = (flat(configs[name]) for name in VL_RECIPES)
    differing = {key for key in mapo.keys() | grpo.keys() if mapo.get(key, "<absent>") != grpo.get(key, "<absent>")}
    mapo_section = {key for key in differing if key.startswith(MAPO_SECTION + ".")}
    assert differing - mapo_section == MAPO_SWITCHES
    assert all(key not in grpo for key in mapo_section)
