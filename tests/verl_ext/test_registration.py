"""`import verl` registers MAPO through the plugin entry point (or VERL_USE_EXTERNAL_MODULES)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.ray_trainer import compute_advantage

from mapo_verl.verl_ext.advantage import MissingRelevanceError, grpo_advantage_step

PROBE = (
    "import sys, verl; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; "
    "print('mapo' in R, 'mapo_verl.verl_ext.advantage' in sys.modules)"
)


def probe(**env_overrides):
    env = {**os.environ, **env_overrides}
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-2:]


def test_entry_point_registers_on_import_verl():
    assert probe(VERL_USE_EXTERNAL_PLUGINS=None, VERL_USE_EXTERNAL_MODULES=None) == ["True", "True"]


def test_plugins_disabled_means_not_registered():
    assert probe(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES=None) == ["False", "False"]


def test_external_modules_route_registers_too():
    assert probe(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="mapo_verl") == ["True", "True"]


def test_math_core_does_not_import_verl():
    code = "import sys, mapo_verl.core, mapo_verl; print(any(m == 'verl' or m.startswith('verl.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def batch(rows=8, length=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length)
    mask[::2, 4:] = 0
    rewards = torch.zeros(rows, length)
    rewards[:, 3] = torch.randint(0, 2, (rows,), generator=gen).float()
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": np.array([str(i // 4) for i in range(rows)], dtype=object)})
    return data, mask, rewards


def test_mapo_estimator_without_the_trainer_fails_with_the_setting_to_change():
    data, _, _ = batch()
    with pytest.raises(MissingRelevanceError, match="trainer.v1.trainer_mode=mapo"):
        compute_advantage(data, adv_estimator="mapo")


def test_the_trainer_runs_verls_advantage_step_as_grpo_and_restores_mapo():
    config = OmegaConf.create({"algorithm": {"adv_estimator": "mapo", "norm_adv_by_std_in_grpo": True}})
    OmegaConf.set_struct(config, True)
    data, mask, rewards = batch()
    with grpo_advantage_step(config):
        out = compute_advantage(data, adv_estimator=config.algorithm.adv_estimator, config=config.algorithm)
    assert config.algorithm.adv_estimator == "mapo"
    grpo, grpo_returns = compute_grpo_outcome_advantage(rewards, mask, index=data.non_tensor_batch["uid"])
    assert torch.equal(out.batch["advantages"], grpo) and torch.equal(out.batch["returns"], grpo_returns)
    with pytest.raises(RuntimeError, match="boom"), grpo_advantage_step(config):
        raise RuntimeError("boom")
    assert config.algorithm.adv_estimator == "mapo"  # restored when the step fails too
    with pytest.raises(ValueError, match="adv_estimator=mapo"), grpo_advantage_step(
            OmegaConf.create({"algorithm": {"adv_estimator": "grpo"}})):
        pass
