"""GRPO and MAPO through veRL's real ``main_ppo`` on CPU: the embedded tiny Omni thinker, audio inputs.

For each recipe (``grpo_tiny_cpu``, ``mapo_tiny_cpu``) one subprocess runs
``python -m mapo_verl.demo.launch --recipe <recipe>`` (demo assets → ``main_ppo``) for two
steps and saves the actor at the last one. The tests then check, from the outside: the run
finished; every console metric is finite; the actor's weights changed, its audio encoder
included (audio features reached the policy update); the rollout server generated with the
initial weights first and with exactly the trained actor's weights after the last update
(checksums of the synced tensors). For MAPO also: the ``mapo/*`` metrics of the ablated
pass, ω̃ and the attention branch appear at every step and are finite, and the launcher
wrote the metrics file and the collapse report; GRPO logs none of them.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.e2e.tiny_runs import MAPO_METRICS, launch_recipe, step_metrics, synced_checksums

pytestmark = pytest.mark.slow

_STEPS = 2


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@pytest.fixture(scope="module", params=["grpo_tiny_cpu", "mapo_tiny_cpu"])
def run(request, tmp_path_factory):
    recipe = request.param
    return launch_recipe(recipe, tmp_path_factory.mktemp(recipe),
                         [f"trainer.total_training_steps={_STEPS}", f"trainer.save_freq={_STEPS}"], timeout=1200)


def test_run_finishes_with_finite_metrics(run):
    assert run["returncode"] == 0, run["log"][-6000:]
    steps = step_metrics(run["log"])
    assert sorted(steps) == list(range(1, _STEPS + 1)), run["log"][-3000:]
    for step, metrics in steps.items():
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "critic/score/mean", "timing_s/gen"):
            assert key in metrics, f"step {step}: no {key}"
        bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
        assert not bad, f"step {step}: non-finite metrics {bad}"
        assert 0.0 <= metrics["critic/score/mean"] <= 1.5
    # a step whose groups all tie in reward has zero advantages (and, at step 1, zero KL)
    assert any(metrics["actor/grad_norm"] > 0 for metrics in steps.values())
    # the console shows progress and step metrics; the config dump and library warnings stay in the log
    assert sorted(step_metrics(run["console"])) == list(range(1, _STEPS + 1))
    assert "Continuous Token" not in run["console"] and len(run["console"].splitlines()) < 60
    assert (run["root"] / "runs" / run["recipe"] / "collapse_report" / "summary.md").is_file()  # GRPO has one too


def test_actor_weights_changed_and_rollout_served_them(run):
    from safetensors.torch import load_file

    from mapo_verl.demo import ensure_demo_assets

    assert run["returncode"] == 0, run["log"][-3000:]
    root = run["root"]
    checkpoint_names = load_file(ensure_demo_assets(root / "demo").omni_model_dir / "model.safetensors")
    assert all(name.startswith("thinker.") for name in checkpoint_names)  # a full Omni checkpoint, talker-less
    initial = {name.removeprefix("thinker."): tensor for name, tensor in checkpoint_names.items()}
    checkpoint = root / "runs" / run["recipe"] / "checkpoints" / f"global_step_{_STEPS}" / "actor"
    saved = torch.load(checkpoint / "model_world_size_1_rank_0.pt", weights_only=False)
    trained = {name: _full(tensor) for name, tensor in saved.items()}
    assert set(trained) == set(initial)

    changed = {name for name in initial if not torch.equal(trained[name].float(), initial[name].float())}
    assert "lm_head.weight" in changed
    assert "audio_tower.proj.weight" in changed  # gradients flowed through the audio features

    synced = synced_checksums(run["log"])
    assert sorted(synced) == list(range(_STEPS + 1))  # initial sync, then one per update
    checksum = lambda state: float(sum(t.double().sum() for t in state.values()))  # noqa: E731
    assert synced[0] == pytest.approx(checksum(initial), rel=1e-12)
    assert synced[_STEPS] == pytest.approx(checksum(trained), rel=1e-12)
    assert synced[_STEPS] != synced[0]


def test_mapo_metrics_appear_and_are_finite(run):
    assert run["returncode"] == 0, run["log"][-3000:]
    steps = step_metrics(run["log"])
    logged = {key for metrics in steps.values() for key in metrics if key.startswith("mapo/")}
    if run["recipe"] == "grpo_tiny_cpu":  # data-health counters (mapo/bad_rows, mapo/rollout_failures...) are logged
        method = ("mapo/ablated", "mapo/delta_h", "mapo/abs_delta_h", "mapo/omega", "mapo/attn", "mapo/audio_mass",
                  "mapo/pos_gate")  # by every run; MAPO's method metrics only by MAPO
        assert not {key for key in logged if key.startswith(method)}
        return
    for step, metrics in steps.items():
        missing = [key for key in MAPO_METRICS if key not in metrics]
        assert not missing, f"step {step}: no {missing}"
        assert 0.0 <= metrics["mapo/audio_mass"] <= 1.0
        assert metrics["mapo/omega_max"] <= 5.0  # C_mask of the authors' launcher
        assert metrics["mapo/abs_delta_h_mean"] > 0  # dropping the audio changed the reference's entropies
    run_dir = run["root"] / "runs" / run["recipe"]
    assert "mapo/attn_loss" in (run_dir / "metrics.jsonl").read_text()
    assert (run_dir / "collapse_report" / "audio_mass_by_position.png").is_file()
    assert "Steps logged: 2" in (run_dir / "collapse_report" / "summary.md").read_text()
