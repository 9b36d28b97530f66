"""MAPO on images through veRL's real ``main_ppo`` on CPU: ``recipes/mapo_tiny_vl_cpu.yaml`` (the embedded tiny
Qwen2.5-VL and the generated shapes set), two steps, actor saved at the last one.

Checked from the outside: the run finished with finite metrics; the image metrics (``mapo/image_*``) are logged
at every step and no ``mapo/audio_*`` one; every row held an image and dropping it changed the policy's
entropies (Δh ≠ 0: the images reached the forward pass and the ablated pass removed them); the actor's
vision tower changed (gradients flowed through the pixels); the rollout served the trained weights; the
collapse report names the image modality.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.tiny_runs import check_image_run_metrics, launch_recipe, synced_checksums

pytestmark = pytest.mark.slow

_STEPS = 2
_RECIPE = "mapo_tiny_vl_cpu"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return launch_recipe(_RECIPE, tmp_path_factory.mktemp(_RECIPE),
                         [f"trainer.total_training_steps={_STEPS}", f"trainer.save_freq={_STEPS}"], timeout=1200)


def test_mapo_on_images_logs_image_metrics_at_every_step(run):
    check_image_run_metrics(run, _STEPS)


def test_vision_tower_trained_and_rollout_served_the_weights(run):
    from safetensors.torch import load_file

    from mapo_verl.demo import ensure_demo_assets

    assert run["returncode"] == 0, run["log"][-3000:]
    root = run["root"]
    initial = load_file(ensure_demo_assets(root / "demo").vl_model_dir / "model.safetensors")
    checkpoint = root / "runs" / _RECIPE / "checkpoints" / f"global_step_{_STEPS}" / "actor"
    saved = torch.load(checkpoint / "model_world_size_1_rank_0.pt", weights_only=False)
    trained = {name: (t.full_tensor() if hasattr(t, "full_tensor") else t) for name, t in saved.items()}
    vision = [name for name in trained if "visual" in name]
    assert vision, sorted(trained)[:10]
    by_suffix = {name.split("visual.", 1)[1]: name for name in initial if "visual." in name}
    changed = [name for name in vision
               if not torch.equal(trained[name].float(), initial[by_suffix[name.split("visual.", 1)[1]]].float())]
    assert changed, "no vision-tower weight changed: the pixels did not reach the policy update"

    synced = synced_checksums(run["log"])
    assert sorted(synced) == list(range(_STEPS + 1))  # initial sync, then one per update
    last = sum(tensor.double().sum().item() for tensor in trained.values())
    assert synced[_STEPS] == pytest.approx(last, rel=1e-9)


def test_collapse_report_names_the_image_modality(run):
    assert run["returncode"] == 0, run["log"][-3000:]
    run_dir = run["root"] / "runs" / _RECIPE
    assert (run_dir / "collapse_report" / "image_mass_by_position.png").is_file()
    assert "mapo/image_mass/late_early_ratio" in (run_dir / "collapse_report" / "summary.md").read_text()
    logged = [json.loads(line)["data"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("mapo/image_mass" in data for data in logged)
