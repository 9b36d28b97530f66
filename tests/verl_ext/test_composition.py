"""veRL's own config composition with the MAPO overrides, and the launch-time checks."""

import subprocess
import sys
import time

import pytest
import yaml
from hydra import compose, initialize_config_module
from verl.utils.config import omega_conf_to_dataclass

from mapo_verl.config import MAPOPolicyLossConfig
from mapo_verl.verl_ext.validation import check_mapo_config

MAPO_OVERRIDES = [
    "algorithm.adv_estimator=mapo",
    "trainer.v1.trainer_mode=mapo",
    "actor_rollout_ref.actor.policy_loss._target_=mapo_verl.config.MAPOPolicyLossConfig",
    "+actor_rollout_ref.actor.policy_loss.mapo.attention.coef=0.1",
    "+actor_rollout_ref.actor.policy_loss.mapo.tau_base=2.0",
]
BATCH_OVERRIDES = [
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
]


def composed(overrides):
    with initialize_config_module("verl.trainer.config", version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def test_main_ppo_cfg_job_composes_the_mapo_section():
    out = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "--cfg", "job", *MAPO_OVERRIDES],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    job = yaml.safe_load(out.stdout)
    policy_loss = job["actor_rollout_ref"]["actor"]["policy_loss"]
    assert policy_loss["_target_"] == "mapo_verl.config.MAPOPolicyLossConfig"
    assert policy_loss["mapo"] == {"attention": {"coef": 0.1}, "tau_base": 2.0}
    assert job["algorithm"]["adv_estimator"] == "mapo" and job["trainer"]["v1"]["trainer_mode"] == "mapo"


def test_composed_config_builds_veRLs_actor_dataclass_with_mapo_values():
    config = composed(MAPO_OVERRIDES + BATCH_OVERRIDES + ["actor_rollout_ref.actor.rollout_n=1"])
    check_mapo_config(config)
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    assert isinstance(actor.policy_loss, MAPOPolicyLossConfig)
    assert actor.policy_loss.mapo.attention.coef == 0.1 and actor.policy_loss.mapo.tau_base == 2.0
    assert actor.policy_loss.mapo.mask_cap == 5.0  # untouched values keep the authors' defaults


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["algorithm.adv_estimator=mapo"], "set trainer.v1.trainer_mode=mapo"),
        (["trainer.v1.trainer_mode=mapo"], "set algorithm.adv_estimator=mapo"),
        (MAPO_OVERRIDES[:2], "actor_rollout_ref.actor.policy_loss._target_=mapo_verl.config.MAPOPolicyLossConfig"),
        (MAPO_OVERRIDES + ["+actor_rollout_ref.actor.policy_loss.mapo.mask_cap=0.5"], "mapo.mask_cap must be"),
        (MAPO_OVERRIDES + ["actor_rollout_ref.actor.loss_agg_mode=token-median"], "loss_agg_mode must be one of"),
        (MAPO_OVERRIDES + ["actor_rollout_ref.actor.strategy=veomni"], "attention.coef > 0 needs one of MAPO's"),
        (MAPO_OVERRIDES + ["algorithm.rollout_correction.bypass_mode=true"], "bypass_mode=false"),
    ],
)
def test_misconfigurations_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_mapo_config(composed(overrides))


def test_grpo_configs_are_left_alone():
    check_mapo_config(composed(["algorithm.adv_estimator=grpo"]))


def test_main_ppo_fails_at_once_before_ray_starts():
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=mapo", *BATCH_OVERRIDES],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode != 0
    assert "set trainer.v1.trainer_mode=mapo" in out.stderr
    assert "ray init kwargs" not in out.stdout  # failed before veRL initialised Ray
    assert time.monotonic() - start < 120
