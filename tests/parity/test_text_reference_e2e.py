"""``text_ref_model`` through veRL's real ``main_ppo`` on CPU (the embedded tiny Omni thinker), one step each:

- MAPO with the frozen reference (the default);
- MAPO with ``text_ref_model`` set to a second tiny model: the demo thinker with its LM head zeroed, so
  its logits are constant and its entropy is exactly log V at every position, whatever it is shown.

Oracle: with the constant-logit text reference, H_abl = log V, so Δh_t = log V − H_pol(t) ≥ 0 on every
token, ``mapo/delta_h_mean`` equals ``mapo/abs_delta_h_mean`` and equals log V minus the policy's mean
entropy (veRL's ``actor/entropy`` under ``loss_agg_mode=token-mean``; every demo row has audio). With the
frozen reference (the initial policy at step 1, audio dropped) Δh is the small effect of the audio, of
both signs, and a much smaller |Δh| than log V − H_pol (seen: 6.7e-4 vs 1.3e-2). ω̃ keeps mean 1 in both.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.tiny_runs import step_metrics

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
def runs(tmp_path_factory):
    from mapo_verl.demo import ensure_demo_assets

    root = tmp_path_factory.mktemp("text_ref")
    assets = ensure_demo_assets(root / "demo")
    text_ref = constant_logit_copy(assets.model_dir, root / "text_ref")
    env = dict(os.environ, MAPO_DEMO_DIR=str(root / "demo"))
    common = ["trainer.total_training_steps=1", "trainer.save_freq=-1", "actor_rollout_ref.actor.loss_agg_mode=token-mean"]
    results = {}
    for name, extra in (("frozen_ref", []), ("text_ref", [f"{TEXT_REF_KEY}={text_ref}"])):
        command = [sys.executable, "-m", "mapo_verl.demo.launch", "--recipe", "mapo_tiny_cpu", *common, *extra]
        run_env = dict(env, MAPO_RUN_DIR=str(root / name))
        result = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=1200, check=False)
        log_file = root / name / "mapo_tiny_cpu" / "main_ppo.log"
        log = result.stdout + result.stderr + (log_file.read_text() if log_file.is_file() else "")
        assert result.returncode == 0, f"{name}: {log[-6000:]}"
        results[name] = step_metrics(log)[1]
    from transformers import AutoConfig

    results["log_v"] = math.log(AutoConfig.from_pretrained(text_ref).get_text_config().vocab_size)
    return results


def test_text_reference_run_gives_finite_mapo_metrics(runs):
    metrics = runs["text_ref"]
    for key in ("mapo/delta_h_mean", "mapo/abs_delta_h_mean", "mapo/omega_min", "mapo/omega_max",
                "mapo/nu_tilde_mean", "mapo/attn_loss", "mapo/audio_mass", "mapo/ablated_pass_s"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["mapo/audio_sample_frac"] == 1.0


def test_ablated_entropy_comes_from_the_text_reference(runs):
    metrics = runs["text_ref"]
    # H_abl = log V on every token: Δh = log V − H_pol ≥ 0, and its mean is log V − mean H_pol
    assert metrics["mapo/delta_h_mean"] == pytest.approx(metrics["mapo/abs_delta_h_mean"], abs=1e-7)
    assert metrics["mapo/delta_h_mean"] == pytest.approx(runs["log_v"] - metrics["actor/entropy"], abs=2e-5)
    assert metrics["mapo/delta_h_mean"] > 0


def test_delta_h_and_omega_differ_from_the_frozen_reference_run_as_expected(runs):
    frozen, text = runs["frozen_ref"], runs["text_ref"]
    # the frozen reference is the step-1 policy without the audio: not log V
    assert abs(frozen["mapo/delta_h_mean"] - (runs["log_v"] - frozen["actor/entropy"])) > 1e-3
    assert abs(frozen["mapo/delta_h_mean"]) <= frozen["mapo/abs_delta_h_mean"]
    assert frozen["mapo/abs_delta_h_mean"] < text["mapo/abs_delta_h_mean"]
    for metrics in (frozen, text):
        assert metrics["mapo/omega_mean"] == pytest.approx(1.0, abs=1e-3)  # ω̃ keeps mean 1 (below the cap)
