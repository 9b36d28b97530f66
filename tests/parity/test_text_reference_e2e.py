"""``text_ref_model`` through veRL's real ``main_ppo`` on CPU (the embedded tiny Qwen2.5-Omni), one step: MAPO
with ``text_ref_model`` set to a second tiny model, the demo thinker with its LM head zeroed, so its logits are
constant and its entropy is exactly log V at every position, whatever it is shown.

Oracle: with the constant-logit text reference, H_abl = log V, so Δh_t = log V − H_pol(t) ≥ 0 on every
token, ``mapo/delta_h_mean`` equals ``mapo/abs_delta_h_mean`` and equals log V minus the policy's mean
entropy (veRL's ``actor/entropy`` under ``loss_agg_mode=token-mean``; every demo row has audio), within
2e-5. The frozen reference (the default) would give the small effect of the audio instead, of both signs
(seen: |Δh| 6.7e-4 against log V − H_pol = 1.3e-2), so the oracle also tells which reference was used.
"""

from __future__ import annotations

import math
import shutil

import pytest

from tests.e2e.tiny_runs import launch_recipe, step_metrics

pytestmark = pytest.mark.slow

TEXT_REF_KEY = "actor_rollout_ref.actor.policy_loss.mapo.text_ref_model"


def constant_logit_copy(model_dir, target):
    """The model at ``model_dir`` with a zero LM head (tokenizer and processor unchanged): uniform outputs."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, target)
    weights = load_file(target / "model.safetensors")
    weights["lm_head.weight"].zero_()
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from transformers import AutoConfig

    from mapo_verl.demo import ensure_demo_assets

    root = tmp_path_factory.mktemp("text_ref")
    text_ref = constant_logit_copy(ensure_demo_assets(root / "demo").model_dir, root / "text_ref")
    result = launch_recipe("mapo_tiny_cpu", root, ["trainer.total_training_steps=1", "trainer.save_freq=-1",
                                                   "actor_rollout_ref.actor.loss_agg_mode=token-mean",
                                                   f"{TEXT_REF_KEY}={text_ref}"], timeout=1200)
    assert result["returncode"] == 0, result["log"][-6000:]
    return {"metrics": step_metrics(result["log"])[1],
            "log_v": math.log(AutoConfig.from_pretrained(text_ref).get_text_config().vocab_size)}


def test_text_reference_run_gives_finite_mapo_metrics(run):
    metrics = run["metrics"]
    for key in ("mapo/delta_h_mean", "mapo/abs_delta_h_mean", "mapo/omega_min", "mapo/omega_max",
                "mapo/nu_tilde_mean", "mapo/attn_loss", "mapo/audio_mass", "mapo/ablated_pass_s"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["mapo/audio_sample_frac"] == 1.0
    assert metrics["mapo/omega_mean"] == pytest.approx(1.0, abs=1e-3)  # ω̃ keeps mean 1 (below the cap)


def test_ablated_entropy_comes_from_the_text_reference(run):
    metrics = run["metrics"]
    # H_abl = log V on every token: Δh = log V − H_pol ≥ 0, and its mean is log V − mean H_pol
    assert metrics["mapo/delta_h_mean"] == pytest.approx(metrics["mapo/abs_delta_h_mean"], abs=1e-7)
    assert metrics["mapo/delta_h_mean"] == pytest.approx(run["log_v"] - metrics["actor/entropy"], abs=2e-5)
    assert metrics["mapo/delta_h_mean"] > 0
