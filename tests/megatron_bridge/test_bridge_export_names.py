"""Do the names Megatron-Bridge exports at weight sync reach vLLM's parameters? (Python 3.12 lane)

veRL 0.9.1's Megatron engine (``use_mbridge``, not the vanilla mbridge) hands the rollout
``AutoBridge.export_hf_weights(module)``. ``export_names_harness.py`` runs that export on Megatron-Bridge
0.5.1's ``Qwen25OmniModel``, ``Qwen3OmniModel`` (MoE) and ``Qwen2AudioModel`` (the lane's tiny models,
TP = PP = 1, one gloo rank), and this test runs the names through vLLM 0.24.0's loading rules
(``tests/weights/vllm_loaders.py``: read from vLLM's source, file and commit in its docstring; vLLM itself
cannot be installed here) against vLLM parameter names derived from the real transformers classes. A name
vLLM would drop or reject, or a vLLM parameter the export leaves unfilled, fails the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_TESTS / "megatron"), str(_TESTS / "weights")]
from gloo_world import run_world, scenario_runs  # noqa: E402
from vllm_loaders import FAMILIES, simulate_load, vllm_parameters  # noqa: E402

HARNESS = Path(__file__).with_name("export_names_harness.py")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """Family -> the harness's record (exported names and shapes, the HF reference state dict, tie flag)."""
    results = run_world(HARNESS, sorted(FAMILIES), tmp_path_factory.mktemp("export"), timeout=600, world=1)
    return {family: scenario_runs(results, family)[0] for family in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bridge_export_loads_completely_into_vllm(exports, family):
    run = exports[family]
    rules = FAMILIES[family]
    params = vllm_parameters(rules, {n: tuple(s) for n, s in run["hf"].items()}, tied=run["tied"])
    report = simulate_load(rules, run["exported"], params, tied=run["tied"])
    print(f"{family}: {len(run['exported'])} exported names, {len(params)} vLLM parameters filled "
          f"({len(report.skipped)} skipped by vLLM's design: {sorted(report.skipped)[:4]})")
    assert report.problems == [], "\n".join(report.problems[:12])
    assert all(run["tied"] and "lm_head" in name for name in report.skipped)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_is_the_hf_state_dict_in_the_checkpoint_layout(exports, family):
    """Every HF tensor exported once, with its HF shape: the Omni thinkers under ``thinker.`` (the prefix vLLM's
    mapper expects), Qwen2-Audio as the released checkpoints (transformers 5.8 keeps that layout in memory)."""
    run = exports[family]
    prefix = "" if family == "qwen2_audio" else "thinker."
    assert all(name.startswith(prefix) for name in run["exported"])
    exported = {name[len(prefix):]: shape for name, shape in run["exported"].items()}
    assert exported == run["hf"]
