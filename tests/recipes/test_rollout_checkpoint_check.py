"""A vLLM rollout of a thinker-only Omni checkpoint fails before Ray starts, naming the key and the fix.

vLLM 0.24.0 registers Qwen2.5-Omni / Qwen3-Omni under their full architectures only; the full checkpoint
serves, and the FSDP actor trains its thinker (``mapo_verl.patches.checkpoint_names``).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mapo_verl.verl_ext.recipe_checks import rollout_checkpoint_problems


def _launch(rollout: str) -> OmegaConf:
    return OmegaConf.create({"actor_rollout_ref": {"model": {"path": "/ckpt/thinker"},
                                                   "rollout": {"name": rollout}}})


def _configs():
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerConfig, Qwen2AudioConfig

    return {"thinker": Qwen2_5OmniThinkerConfig(), "full": Qwen2_5OmniConfig(), "qwen2_audio": Qwen2AudioConfig()}


def test_a_thinker_only_checkpoint_on_vllm_is_refused():
    [problem] = rollout_checkpoint_problems(_launch("vllm"), _configs()["thinker"])
    assert "actor_rollout_ref.model.path='/ckpt/thinker'" in problem
    assert "qwen2_5_omni_thinker" in problem and "full" in problem


@pytest.mark.parametrize("rollout, model", [("vllm", "full"), ("vllm", "qwen2_audio"), ("hf", "thinker")])
def test_what_the_rollout_can_serve_passes(rollout, model):
    assert rollout_checkpoint_problems(_launch(rollout), _configs()[model]) == []


def test_a_config_not_on_this_machine_is_not_checked():
    assert rollout_checkpoint_problems(_launch("vllm"), None) == []
