"""Do the names Megatron-Bridge exports at weight sync reach vLLM's parameters? (Python 3.12 lane)

veRL 0.9.1's Megatron engine (``use_mbridge``, not the vanilla mbridge) hands the rollout
``AutoBridge.export_hf_weights(module)``, which gathers the full tensors on every rank. ``export_names_harness.py``
runs that export on Megatron-Bridge 0.5.1's ``Qwen25OmniModel``, ``Qwen3OmniModel`` (MoE) and
``Qwen2AudioModel`` (the lane's tiny models) on a two-rank gloo world, under TP = 2 and under PP = 2 (Qwen3-Omni:
PP = 2 only; megatron-core refuses MoE with TP > 1 without sequence parallelism, which the CPU layer spec lacks),
and this test runs each rank's names through vLLM 0.24.0's loading rules
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


SCENARIOS = ["qwen25_omni:tp2", "qwen25_omni:pp2", "qwen2_audio:tp2", "qwen2_audio:pp2", "qwen3_omni:pp2"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[dict]:
    """Per rank, scenario -> the harness's record (exported names and shapes, HF reference state dict, tie flag)."""
    return run_world(HARNESS, SCENARIOS, tmp_path_factory.mktemp("export"), timeout=900)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_bridge_export_loads_completely_into_vllm(exports, scenario):
    family = scenario.split(":")[0]
    rules = FAMILIES[family]
    for rank, run in enumerate(scenario_runs(exports, scenario)):
        params = vllm_parameters(rules, {n: tuple(s) for n, s in run["hf"].items()}, tied=run["tied"])
        report = simulate_load(rules, run["exported"], params, tied=run["tied"])
        print(f"{scenario} rank {rank}: {len(run['exported'])} exported names, {len(params)} vLLM parameters "
              f"filled ({len(report.skipped)} skipped by vLLM's design: {sorted(report.skipped)[:4]})")
        assert report.problems == [], f"rank {rank}:\n" + "\n".join(report.problems[:12])
        assert all(run["tied"] and "lm_head" in name for name in report.skipped)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_export_is_the_hf_state_dict_in_the_checkpoint_layout(exports, scenario):
    """Every HF tensor exported once, with its HF shape, on every rank: the Omni thinkers under ``thinker.`` (the
    prefix vLLM's mapper expects), Qwen2-Audio as the released checkpoints (transformers 5.8 keeps that layout
    in memory)."""
    prefix = "" if scenario.startswith("qwen2_audio") else "thinker."
    for run in scenario_runs(exports, scenario):
        assert all(name.startswith(prefix) for name in run["exported"])
        exported = {name[len(prefix):]: shape for name, shape in run["exported"].items()}
        assert exported == run["hf"]
