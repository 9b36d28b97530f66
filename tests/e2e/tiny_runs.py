"""Running a CPU recipe through ``mapo_verl.demo.launch`` (``main_ppo``) and reading its step metrics,
for the end-to-end tests of both lanes (``tests/e2e``, ``tests/megatron_bridge``, ``tests/parity``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

_METRIC = re.compile(r"(\S+?):(?:np\.\w+\()?(-?[\d.]+(?:e[-+]?\d+)?|nan|inf|-inf)\)?(?=\s-\s|$)")

# MAPO's method metrics that every step of a MAPO run logs
MAPO_METRICS = ("mapo/ablated_pass_s", "mapo/delta_h_mean", "mapo/omega_mean", "mapo/omega_max",
                "mapo/attn_loss", "mapo/audio_mass", "mapo/audio_mass/decile_0", "mapo/pos_gate_frac")


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
