"""Config mistakes that can be known before Ray fail there, naming the key: attention layers against the
model's decoder, the POS tagger's availability; through main_ppo's launcher, before ``ray.init``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from mapo_verl.demo.launch import default_recipes_dir

LAYERS_KEY = "actor_rollout_ref.actor.policy_loss.mapo.attention.layers"
TAGGER_KEY = "actor_rollout_ref.actor.policy_loss.mapo.pos_gate.tagger"


def composed(overrides=()):
    import verl  # noqa: F401  (the MAPO plugin: _target_ classes, the ${mapo_demo:...} resolver)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(default_recipes_dir()), version_base=None):
        return compose(config_name="mapo_tiny_cpu", overrides=list(overrides))


def test_the_tiny_recipe_passes(demo_assets):
    from mapo_verl.verl_ext.validation import check_mapo_config

    check_mapo_config(composed())


@pytest.mark.parametrize("layers", ["[99]", "[-3]", "[0,-2]"])
def test_attention_layers_are_checked_against_the_model(demo_assets, layers):
    from mapo_verl.verl_ext.validation import check_mapo_config

    # the embedded model's decoder has 2 layers: 99 and -3 are out of range, 0 and -2 are the same layer
    with pytest.raises(ValueError, match=LAYERS_KEY.replace(".", r"\.")) as caught:
        check_mapo_config(composed([f"{LAYERS_KEY}={layers}"]))
    assert "2 layers" in str(caught.value) or "2-layer" in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed here")
def test_unavailable_pos_tagger_is_named(demo_assets):
    from mapo_verl.verl_ext.validation import check_mapo_config

    with pytest.raises(ValueError, match=TAGGER_KEY.replace(".", r"\.") + "='spacy'"):
        check_mapo_config(composed([f"{TAGGER_KEY}=spacy"]))


@pytest.mark.slow
def test_launch_fails_before_ray(demo_assets, tmp_path):
    """Through the launcher and main_ppo (the same validate_config hook checks the tagger)."""
    env = dict(os.environ, MAPO_RUN_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "mapo_verl.demo.launch", f"{LAYERS_KEY}=[99]"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert f"{LAYERS_KEY}: layer 99 is out of range" in result.stdout + result.stderr
    full_log = (tmp_path / "mapo_tiny_cpu" / "main_ppo.log").read_text()
    assert "ray init kwargs" not in full_log and "Started a local Ray instance" not in full_log
