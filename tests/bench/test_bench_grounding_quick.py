"""scripts/bench_grounding.py --quick end to end: warm start, one RL arm (MAPO) through veRL's real
main_ppo on CPU, evaluation, and every JSON, plot and markdown table the benchmark promises. (The
GRPO arm differs only in its recipe, which tests/bench/test_twin_recipes.py checks; the overlay of
several runs is tested on synthetic logs in test_collapse_compare.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    out, work = base / "results", base / "work"
    command = [sys.executable, str(ROOT / "scripts" / "bench_grounding.py"), "--quick", "--arms", "mapo",
               "--out", str(out), "--work", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return {"result": result, "out": out, "work": work}


def test_quick_bench_writes_every_result(bench):
    result, out = bench["result"], bench["out"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    for arm in ("warm_start", "mapo"):
        record = json.loads((out / f"seed0_{arm}.json").read_text())
        assert record["arm"] == arm and record["seed"] == 0 and record["quick"] is True
        evaluation = record["evaluation"]
        for dist in ("uniform", "cycle"):
            k12 = evaluation["greedy"][dist]["12"]
            assert len(k12["position_acc"]) == 12 and 0.0 <= k12["exact"] <= 1.0
            assert len(k12["prior_follow"]) == 11 and all(0.0 <= f <= 1.0 for f in k12["prior_follow"])
            mass = evaluation["teacher_forced"][dist]["12"]["audio_mass_layer_mean"]
            assert len(mass) == 12 and all(0.0 <= m <= 1.0 for m in mass)
            assert set(evaluation["perturbation"][dist]) == {"silence_vs_original", "swap_vs_original",
                                                              "swap_vs_swapped_clip"}
        assert set(record["versions"]) >= {"torch", "transformers", "verl", "mapo_verl_commit"}
        if arm != "warm_start":
            assert record["steps"] == 1 and "main_ppo" not in record["command"]  # the launcher's command
            assert "critic/score/mean" in record["train_metrics"]
    for name in ("exact_accuracy_by_k.png", "position_accuracy_k12.png", "prior_follow_k12.png",
                 "audio_mass_by_position.png",
                 "delta_h_by_position.png", "perturbation_k12.png", "reward_over_steps.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    summary = (out / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ") and "(n=" in line]
    assert [line.split(" | ")[0] for line in table] == ["| warm_start", "| mapo"]
    assert all("(n=1)" in line for line in table)


def test_mapo_arm_logged_its_diagnostics(bench):
    assert bench["result"].returncode == 0
    metrics = json.loads((bench["out"] / "seed0_mapo.json").read_text())["train_metrics"]
    assert "mapo/omega_max" in metrics and "mapo/audio_mass/late_early_ratio" in metrics
    assert (bench["work"] / "seed0" / "mapo" / "mapo_grounding_tiny_cpu" / "collapse_report" / "summary.md").is_file()
    assert json.loads((bench["work"] / "seed0" / "mapo" / "run.json").read_text())["command"] == \
        json.loads((bench["out"] / "seed0_mapo.json").read_text())["command"]  # what a later invocation reuses
