"""Running a CPU recipe through ``mapo_verl.demo.launch`` (``main_ppo``) and reading its step metrics,
for the end-to-end tests of both lanes (``tests/e2e``, ``tests/megatron_bridge``, ``tests/parity``)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

_METRIC = re.compile(r"(\S+?):(?:np\.\w+\()?(-?[\d.]+(?:e[-+]?\d+)?|nan|inf|-inf)\)?(?=\s-\s|$)")

# MAPO's method metrics that every step of a MAPO run logs
MAPO_METRICS = ("mapo/ablated_pass_s", "mapo/delta_h_mean", "mapo/omega_mean", "mapo/omega_max",
                "mapo/attn_loss", "mapo/audio_mass", "mapo/audio_mass/decile_0", "mapo/pos_gate_frac")


# What every step of a MAPO run on images logs (the audio names are not logged)
IMAGE_METRICS = ("mapo/image_sample_frac", "mapo/image_mass", "mapo/image_lift", "mapo/image_mass/decile_0",
                 "mapo/image_mass/late_early_ratio", "mapo/attn_loss", "mapo/omega_mean")


def synced_checksums(log: str, replica: int = 0) -> dict[int, float]:
    """``{step: checksum}`` of the weights the HF rollout served after each sync (step 0: the initial ones)."""
    from mapo_verl.cpu.rollout import CHECKSUM_LOG_PREFIX

    # the number only: Ray may append colour codes to a worker's line
    line = re.escape(CHECKSUM_LOG_PREFIX) + rf" replica={replica} step=(\d+) checksum=(-?[\d.]+(?:e[-+]?\d+)?)"
    return {int(step): float(checksum) for step, checksum in re.findall(line, log)}


def bridge_trained_weights(run: dict, steps_run: int, initial_file: Path) -> tuple[dict, dict, set[str]]:
    """A Megatron run's initial HF weights, the HF weights it saved through the bridge at its last step (same
    names), and the names that changed. The engine trains bf16 parameters (fp32 masters in the optimizer), so
    a weight changed when it differs from the initial one rounded to bf16."""
    import torch
    from safetensors.torch import load_file

    assert run["returncode"] == 0, run["log"][-3000:]
    initial = load_file(initial_file)
    exported = run["root"] / "runs" / run["recipe"] / "checkpoints" / f"global_step_{steps_run}" / "actor"
    files = sorted(exported.rglob("*.safetensors"))
    assert files, f"no HF weights saved under {exported}"
    trained = {name: tensor for path in files for name, tensor in load_file(path).items()}
    assert set(trained) == set(initial)
    changed = {name for name in initial if not torch.equal(trained[name].float(), initial[name].bfloat16().float())}
    return initial, trained, changed


def check_bf16_rollout_sync(run: dict, steps_run: int, initial: dict, trained: dict) -> None:
    """The rollout served the initial weights rounded to bf16 first, then after every update, and exactly the
    trained bf16 weights after the last one."""
    def checksum(state: dict) -> float:
        return float(sum(tensor.double().sum() for tensor in state.values()))

    synced = synced_checksums(run["log"])
    assert sorted(synced) == list(range(steps_run + 1))  # initial sync, then one per update
    assert synced[0] == pytest.approx(checksum({n: t.bfloat16() for n, t in initial.items()}), rel=1e-12)
    assert synced[steps_run] == pytest.approx(checksum(trained), rel=1e-12)
    assert synced[steps_run] != synced[0]


def check_image_run_metrics(run: dict, steps_run: int) -> None:
    """A MAPO run on images (every row holds one) finished and logged finite image metrics at every step."""
    assert run["returncode"] == 0, run["log"][-6000:]
    steps = step_metrics(run["log"])
    assert sorted(steps) == list(range(1, steps_run + 1)), run["log"][-3000:]
    for step, metrics in steps.items():
        bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
        assert not bad, f"step {step}: non-finite metrics {bad}"
        missing = [key for key in IMAGE_METRICS if key not in metrics]
        assert not missing, f"step {step}: no {missing}"
        assert not [key for key in metrics if key.startswith("mapo/audio")], f"step {step}: audio metrics logged"
        assert metrics["mapo/image_sample_frac"] == 1.0  # every shapes row has an image
        assert metrics["mapo/abs_delta_h_mean"] > 0  # the image changed the policy's entropies
        assert 0.0 < metrics["mapo/image_mass"] < 1.0


def step_metrics(log: str) -> dict[int, dict[str, float]]:
    """``{step: {metric: value}}`` from the console logger's ``step:N - key:value - ...`` lines."""
    steps = {}
    for line in log.splitlines():
        match = re.search(r"step:(\d+) - (.*)$", line)
        if match:
            steps[int(match.group(1))] = {key: float(value) for key, value in _METRIC.findall(match.group(2))}
    return steps


def launch_recipe(recipe: str, root: Path, overrides: list[str], timeout: float) -> dict:
    """Run ``recipe`` with demo assets and runs under ``root``; the console, the full main_ppo log, the
    exit status and the wall time."""
    env = dict(os.environ, MAPO_DEMO_DIR=str(root / "demo"), MAPO_RUN_DIR=str(root / "runs"))
    command = [sys.executable, "-m", "mapo_verl.demo.launch", "--recipe", recipe, *overrides]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    console = result.stdout + result.stderr
    full_log = root / "runs" / recipe / "main_ppo.log"  # the launcher keeps main_ppo's whole output there
    log = console + (full_log.read_text() if full_log.is_file() else "")
    print(f"{recipe}: main_ppo in {wall:.0f}s (exit {result.returncode})")
    return {"recipe": recipe, "returncode": result.returncode, "log": log, "console": console, "root": root,
            "wall": wall}
