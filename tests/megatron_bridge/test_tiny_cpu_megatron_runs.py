"""GRPO and MAPO through veRL's real ``main_ppo`` with ``strategy=megatron`` on CPU (Python 3.12 lane).

For each recipe (``grpo_tiny_cpu_megatron``, ``mapo_tiny_cpu_megatron``) one subprocess runs
``python -m mapo_verl.demo.launch --recipe <recipe>``: veRL's Megatron engine builds the embedded tiny
Qwen2.5-Omni through Megatron-Bridge's own Qwen2.5-Omni bridge, tensor-parallel over two processes
(gloo), trains two steps and saves the actor's HF weights through the bridge at the last one. After
every update the actor's weights reach the HF rollout through the bridge's HF export (the export a
vLLM rollout receives on GPU). The tests check, from the outside, what the FSDP end-to-end test
checks (``tests/e2e/test_tiny_cpu_runs.py``): the run finished with finite metrics; the weights
changed, the audio encoder's included; the rollout generated with the initial weights first and with
exactly the trained actor's weights after the last update; MAPO's metrics appear at every step.
"""

from __future__ import annotations

import math

import pytest

from tests.e2e.tiny_runs import (
    MAPO_METRICS,
    bridge_trained_weights,
    check_bf16_rollout_sync,
    launch_recipe,
    step_metrics,
)

pytestmark = pytest.mark.slow

_STEPS = 2


@pytest.fixture(scope="module", params=["grpo_tiny_cpu_megatron", "mapo_tiny_cpu_megatron"])
def run(request, tmp_path_factory):
    recipe = request.param
    return launch_recipe(recipe, tmp_path_factory.mktemp(recipe), [
        f"trainer.total_training_steps={_STEPS}", f"trainer.save_freq={_STEPS}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[hf_model]",  # the trained weights, HF names
    ], timeout=1800)


def test_run_finishes_with_finite_metrics(run):
    assert run["returncode"] == 0, run["log"][-6000:]
    steps = step_metrics(run["log"])
    assert sorted(steps) == list(range(1, _STEPS + 1)), run["log"][-3000:]
    for step, metrics in steps.items():
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/gen"):
            assert key in metrics, f"step {step}: no {key}"
        bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
        assert not bad, f"step {step}: non-finite metrics {bad}"
    assert any(metrics["actor/grad_norm"] > 0 for metrics in steps.values())


def test_actor_weights_changed_and_rollout_served_them(run):
    from mapo_verl.demo import ensure_demo_assets

    initial_file = ensure_demo_assets(run["root"] / "demo").omni_model_dir / "model.safetensors"
    initial, trained, changed = bridge_trained_weights(run, _STEPS, initial_file)
    assert "thinker.lm_head.weight" in changed
    assert "thinker.audio_tower.proj.weight" in changed  # gradients flowed through the audio features
    check_bf16_rollout_sync(run, _STEPS, initial, trained)


def test_mapo_metrics_appear_and_are_finite(run):
    assert run["returncode"] == 0, run["log"][-3000:]
    steps = step_metrics(run["log"])
    logged = {key for metrics in steps.values() for key in metrics if key.startswith("mapo/")}
    if run["recipe"].startswith("grpo"):
        assert not {key for key in logged if key.startswith(("mapo/omega", "mapo/attn", "mapo/delta_h"))}
        return
    for step, metrics in steps.items():
        missing = [key for key in MAPO_METRICS if key not in metrics]
        assert not missing, f"step {step}: no {missing}"
        assert 0.0 <= metrics["mapo/audio_mass"] <= 1.0
        assert metrics["mapo/omega_max"] <= 5.0
        assert metrics["mapo/abs_delta_h_mean"] > 0  # dropping the audio changed the reference's entropies
