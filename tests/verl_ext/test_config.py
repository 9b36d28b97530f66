"""MAPO's config dataclass: the authors' launcher defaults (docs/DESIGN.md parity table) and named errors."""

import pytest
from omegaconf import OmegaConf

from mapo_verl.config import (
    AUTHORS_VERL_SETTINGS,
    AttentionLossConfig,
    MAPOConfig,
    MAPOPolicyLossConfig,
    POSGateConfig,
    mapo_config_from,
)

# The authors' launcher values, typed in from the release's launcher (docs/DESIGN.md parity table).
SPEC_LAUNCHER_DEFAULTS = {
    ("attention", "coef"): 0.05,
    ("tau_base",): 1.0,
    ("mask_cap",): 5.0,
    ("attention", "kappa"): 1.0,
    ("attention", "layers"): [-3, -2, -1],
    ("attention", "head_reduce"): "max",
    ("attention", "layer_reduce"): "mean",
    ("attention", "advantage_floor_eps"): 0.02,
    ("attention", "fail_floor"): 0.1,
    ("attention", "pref_cap"): 3.0,
    ("attention", "eps"): 1e-6,
    ("pos_gate", "tags"): ["NOUN", "VERB", "ADJ", "ADV", "NUM", "X"],
    ("ablation",): "drop",
    ("ablation_reference",): "ref",
}


@pytest.mark.parametrize("path,value", list(SPEC_LAUNCHER_DEFAULTS.items()))
def test_defaults_are_the_authors_launcher_values(path, value):
    node = MAPOConfig()
    for key in path:
        node = getattr(node, key)
    assert node == value


def test_verl_owned_settings_follow_the_spec():
    assert AUTHORS_VERL_SETTINGS["actor_rollout_ref.actor.kl_loss_coef"] == 0.02
    assert AUTHORS_VERL_SETTINGS["actor_rollout_ref.rollout.n"] == 8
    assert AUTHORS_VERL_SETTINGS["data.max_response_length"] == 1200
    assert AUTHORS_VERL_SETTINGS["actor_rollout_ref.actor.optim.lr"] == 1e-6
    assert AUTHORS_VERL_SETTINGS["actor_rollout_ref.rollout.top_p"] == 0.99
    assert AUTHORS_VERL_SETTINGS["actor_rollout_ref.rollout.top_k"] == 50


BAD_VALUES = [
    (AttentionLossConfig, {"coef": -0.1}, "attention.coef must be a finite number >= 0"),
    (AttentionLossConfig, {"coef": float("nan")}, "attention.coef"),
    (AttentionLossConfig, {"layers": []}, "attention.layers must be a non-empty list"),
    (AttentionLossConfig, {"layers": [1, 1]}, "without repeated"),
    (AttentionLossConfig, {"head_reduce": "sum"}, r"attention.head_reduce must be one of \['max', 'mean'\]"),
    (AttentionLossConfig, {"layer_reduce": "min"}, "attention.layer_reduce"),
    (AttentionLossConfig, {"kappa": 0.5}, r"attention.kappa must be a finite number >= 1"),
    (AttentionLossConfig, {"eps": 0.0}, r"attention.eps must be in \(0, 1\)"),
    (AttentionLossConfig, {"fail_floor": 1.5}, r"attention.fail_floor must be in \[0, 1\]"),
    (AttentionLossConfig, {"pref_cap": -1.0}, "attention.pref_cap"),
    (AttentionLossConfig, {"advantage_floor_eps": -0.01}, "attention.advantage_floor_eps"),
    (POSGateConfig, {"tags": ["NOUNS"]}, "pos_gate.tags must be a non-empty list of universal POS tags"),
    (POSGateConfig, {"tagger": "stanza"}, "pos_gate.tagger"),
    (MAPOConfig, {"tau_base": 0.0}, "policy_loss.mapo.tau_base must be a finite number > 0"),
    (MAPOConfig, {"mask_cap": 0.5}, "mapo.mask_cap must be a number >= 1, or 0 for no cap"),
    (MAPOConfig, {"ablation": "mute"}, r"mapo.ablation must be one of \['drop', 'zero', 'noise'\]"),
    (MAPOConfig, {"ablation_reference": "teacher"}, "mapo.ablation_reference"),
    (MAPOConfig, {"noise_scale": 0}, "mapo.noise_scale"),
    (MAPOConfig, {"attention": {"coef": 0.1, "kapa": 2}}, r"unknown key\(s\) \['kapa'\] in .*mapo.attention"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD_VALUES)
def test_bad_values_name_the_key_and_range(cls, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        cls(**kwargs)
    assert "actor_rollout_ref.actor.policy_loss.mapo" in str(err.value)


def test_nested_sections_from_plain_dicts_and_omegaconf():
    config = MAPOPolicyLossConfig(mapo={"tau_base": 2.0, "attention": {"coef": 0.2, "layers": [0, -1]}})
    assert isinstance(config.mapo, MAPOConfig) and config.mapo.attention.layers == [0, -1]
    assert config.loss_mode == "vanilla"
    trainer_cfg = OmegaConf.create(
        {"actor_rollout_ref": {"actor": {"policy_loss": {"mapo": {"mask_cap": 0, "pos_gate": {"enable": False}}}}}}
    )
    parsed = mapo_config_from(trainer_cfg)
    assert parsed.mask_cap == 0 and parsed.pos_gate.enable is False and parsed.attention.coef == 0.05
    assert mapo_config_from(config) is config.mapo


def test_missing_section_says_what_to_set():
    with pytest.raises(ValueError, match="policy_loss._target_=mapo_verl.config.MAPOPolicyLossConfig"):
        mapo_config_from(OmegaConf.create({"actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "vanilla"}}}}))


def test_config_is_frozen_like_verl_configs():
    config = MAPOConfig()
    with pytest.raises(Exception, match="frozen"):
        config.tau_base = 3.0
