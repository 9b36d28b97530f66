"""The CPU GRPO recipes are true A/B twins of their MAPO recipes: same steps, same file logger and
metrics path, nothing else differs but the MAPO part and the experiment name."""

import pytest

from tests.recipes.test_recipes import MAPO_SECTION, MAPO_SWITCHES, composed, flat

PAIRS = [
    ("grpo_tiny_cpu", "mapo_tiny_cpu"),
    ("grpo_tiny_cpu_megatron", "mapo_tiny_cpu_megatron"),
    ("grpo_grounding_tiny_cpu", "mapo_grounding_tiny_cpu"),
]


@pytest.mark.parametrize("grpo_name, mapo_name", PAIRS)
def test_cpu_twins_differ_only_in_the_mapo_part(grpo_name, mapo_name):
    grpo, mapo = flat(composed(grpo_name)), flat(composed(mapo_name))
    differing = {key for key in mapo.keys() | grpo.keys() if mapo.get(key, "<absent>") != grpo.get(key, "<absent>")}
    mapo_section = {key for key in differing if key.startswith(MAPO_SECTION + ".")}
    assert differing - mapo_section == MAPO_SWITCHES
    assert mapo_section and not any(key in grpo for key in mapo_section)
    assert grpo["trainer.experiment_name"] == grpo_name and mapo["trainer.experiment_name"] == mapo_name


@pytest.mark.parametrize("name", [name for pair in PAIRS for name in pair])
def test_cpu_recipes_log_steps_to_a_file_under_the_run_dir(name):
    config = flat(composed(name))
    assert "file" in config["trainer.logger"] and config["trainer.total_training_steps"] >= 3
    assert config["trainer.default_local_dir"] == "${oc.env:MAPO_RUN_DIR,runs}/${trainer.experiment_name}/checkpoints"
