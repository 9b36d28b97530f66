"""MAPO on images through veRL's real ``main_ppo`` with ``strategy=megatron`` on CPU (Python 3.12 lane):
``recipes/mapo_tiny_vl_cpu_megatron.yaml``, the embedded tiny Qwen2.5-VL built by Megatron-Bridge's own
Qwen2.5-VL bridge (``Qwen25VLModel``), tensor-parallel over two processes, two steps, the actor's HF weights
saved through the bridge at the last one.

Checked from the outside, as for the FSDP run (``tests/vision/test_vision_tiny_run.py``): finite image metrics
at every step and no audio ones, Δh ≠ 0 (the images reached the forward pass and the ablated pass removed
them); the vision tower changed; the rollout served the initial weights first and exactly the trained actor's
weights after the last update, synced under the bridge's export names.
"""

from __future__ import annotations

import pytest

from tests.e2e.tiny_runs import bridge_trained_weights, check_bf16_rollout_sync, check_image_run_metrics, launch_recipe

pytestmark = pytest.mark.slow

_STEPS = 2
_RECIPE = "mapo_tiny_vl_cpu_megatron"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return launch_recipe(_RECIPE, tmp_path_factory.mktemp(_RECIPE), [
        f"trainer.total_training_steps={_STEPS}", f"trainer.save_freq={_STEPS}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[hf_model]",  # the trained weights, HF names
    ], timeout=1500)


def test_mapo_on_images_through_megatron_logs_image_metrics_at_every_step(run):
    check_image_run_metrics(run, _STEPS)


def test_vision_tower_trained_and_rollout_served_the_weights(run):
    from mapo_verl.demo import ensure_demo_assets

    initial_file = ensure_demo_assets(run["root"] / "demo").vl_model_dir / "model.safetensors"
    initial, trained, changed = bridge_trained_weights(run, _STEPS, initial_file)
    assert "lm_head.weight" in changed
    assert [name for name in changed if name.startswith("visual.")], "the pixels did not reach the policy update"
    check_bf16_rollout_sync(run, _STEPS, initial, trained)
