"""A minimal MAPO trainer config for the launch check (``check_mapo_config``)."""

from omegaconf import OmegaConf


def launch_config(loss_mode="vanilla", mapo=None, **actor):
    """``loss_mode``, the ``mapo`` section (η = 0 unless given) and actor keys over plain defaults."""
    return OmegaConf.create({
        "algorithm": {"adv_estimator": "mapo"},
        "trainer": {"use_v1": True, "v1": {"trainer_mode": "mapo"}},
        "actor_rollout_ref": {"actor": {
            "strategy": "fsdp", "loss_agg_mode": "seq-mean-token-mean", "use_kl_loss": False, "entropy_coeff": 0.0,
            "policy_loss": {"_target_": "mapo_verl.config.MAPOPolicyLossConfig", "loss_mode": loss_mode,
                            "mapo": mapo if mapo is not None else {"attention": {"coef": 0.0}}},
            **actor},
            "model": {"path": "/nonexistent"}},
    })
