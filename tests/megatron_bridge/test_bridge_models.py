"""MAPO's attention hook and ablated pass on Megatron-Bridge's real audio and vision models (Python 3.12 lane).

One gloo world of two CPU processes (``bridge_harness.py``) builds Megatron-Bridge 0.5.1's
``Qwen25OmniModel``, ``Qwen3OmniModel`` (MoE), ``Qwen2AudioModel`` and ``Qwen25VLModel`` (keys: the image
placeholders) from tiny configs (megatron-core 0.18.2, local layer spec, float64) and compares, per
parallel layout, the loss and every gradient of ``L_main + η·L_attn`` with the hook against an
explicit-softmax TP=1/PP=1 reference (see the harness).
The Qwen2.5-Omni thinker's attention is Megatron-Bridge's ``Qwen3VLSelfAttention``, which reads any
non-``None`` ``packed_seq_params`` as packed input: micro-batch size 1 crashed before the carrier was
kept away from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "megatron"))
from gloo_world import run_world, scenario_runs  # noqa: E402

HARNESS = Path(__file__).with_name("bridge_harness.py")
CASES = ["tp2_mbs1", "tp2_mbs2_full", "pp2_mbs2_selective", "pp2_mbs1_first"]
PARALLEL = [f"{family}:{case}" for family in ("qwen25_omni", "qwen2_audio") for case in CASES] + [
    f"qwen3_omni:{case}" for case in CASES if case.startswith("pp2")] + [
    f"qwen25_vl:{case}" for case in ("tp2_mbs1", "pp2_mbs1_first")]
ABLATED = [f"{family}:ablated" for family in ("qwen25_omni", "qwen3_omni", "qwen2_audio", "qwen25_vl")]
# what the ablated pass keeps: the layout keys that keep rope positions aligned
KEPT = {"qwen25_vl": ["image_grid_thw"]}
GRAD_TOL = 1e-9  # float64 throughout; measured ≤ 1e-15 (values in the JSON / -rA output)
VALUE_TOL = 1e-12

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    """Launch the two-rank world once; per rank, scenario name -> measurements."""
    return run_world(HARNESS, PARALLEL + ABLATED, tmp_path_factory.mktemp("bridge"), timeout=900)


@pytest.mark.parametrize("name", PARALLEL)
def test_loss_and_every_gradient_match_the_explicit_reference(results, name):
    runs = scenario_runs(results, name)
    for rank, run in enumerate(runs):
        print(f"{name} rank {rank} ({run['model']}, {run['attention']}): grad rel {run['grad_rel']:.1e}, "
              f"modality-encoder grad rel {run['audio_grad_rel']}, mass abs {run['mass_abs']}")
        assert run["grad_rel"] <= GRAD_TOL, f"rank {rank}: gradients differ by {run['grad_rel']:.3e} " \
                                            f"(worst: {run['worst_parameter']})"
        assert abs(run["attn"] - run["attn_ref"]) <= VALUE_TOL * abs(run["attn_ref"])
        assert run["mass_abs"] is None or run["mass_abs"] <= VALUE_TOL
    # the audio (vision) encoder lives on the first stage (every rank under TP): its gradient is compared, and
    # not zero (the field names say audio for every modality)
    first_stage = [run for run in runs if run["audio_grad_scale"] > 0]
    assert first_stage, "no rank holds a trained modality encoder"
    assert all(run["audio_grad_rel"] <= GRAD_TOL for run in first_stage)
    assert sum(run["requests"] for run in runs) > 0


def test_qwen25_omni_attention_is_megatron_bridge_s_own(results):
    """The hook runs inside Megatron-Bridge's Qwen3VLSelfAttention (the class that squeezed batch 1)."""
    assert {run["attention"] for run in scenario_runs(results, "qwen25_omni:tp2_mbs1")} == {"Qwen3VLSelfAttention"}


@pytest.mark.parametrize("name", ABLATED)
def test_ablated_entropies_differ_only_after_the_first_placeholder(results, name):
    for run in scenario_runs(results, name):
        assert run["before_max_abs"] == 0.0
        assert run["after_min_of_max_abs"] > 1e-4  # every sample's entropies move once the clip/image is in context
        # features dropped; clip lengths (the image grid) kept for the positions
        assert run["kept"] == KEPT.get(name.split(":")[0], ["feature_attention_mask"])


def test_the_vision_family_is_megatron_bridge_s_qwen25_vl(results):
    """The vision cases run Megatron-Bridge's own Qwen2.5-VL class, its language model a megatron-core GPT."""
    runs = scenario_runs(results, "qwen25_vl:tp2_mbs1")
    assert {(run["model"], run["attention"]) for run in runs} == {("Qwen25VLModel", "SelfAttention")}
