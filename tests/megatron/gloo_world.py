"""A two-process gloo world for the Megatron harnesses (``mcore_harness.py``, ``bridge_harness.py``).

The pytest side calls :func:`run_world` once per module: it starts one harness process per rank and
returns, per rank, scenario name → the measurements that rank wrote. The harness side calls
:func:`serve_rank` with its ``run_scenario``: a scenario that raises is reported as ``{"crash": traceback}``
so the test fails naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_world(harness: Path, scenarios: list[str], out: Path, *, timeout: float, world: int = 2) -> list[dict]:
    """Run ``harness`` on ``world`` gloo ranks; per rank, scenario name -> measurements."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, str(harness), "--rank", str(r), "--world", str(world), "--port",
                               str(port), "--out", str(out), "--scenarios", ",".join(scenarios)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(world)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    per_rank = []
    for rank, proc in enumerate(procs):
        path = out / f"rank{rank}.json"
        assert proc.returncode == 0 and path.exists(), f"rank {rank} failed:\n{logs[rank][-4000:]}"
        per_rank.append(json.loads(path.read_text()))
    return per_rank


def scenario_runs(results: list[dict], name: str) -> list[dict]:
    """Every rank's measurements of scenario ``name``; fails naming the rank that crashed."""
    runs = [rank[name] for rank in results]
    for rank, run in enumerate(runs):
        assert "crash" not in run, f"{name} crashed on rank {rank}:\n{run['crash']}"
    return runs


def serve_rank(run_scenario: Callable[[str], dict]) -> None:
    """The harness's ``main``: join the world, run the named scenarios, write ``rank{R}.json``."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    parser = argparse.ArgumentParser()
    for flag, kind in (("--rank", int), ("--world", int), ("--port", int), ("--out", str), ("--scenarios", str)):
        parser.add_argument(flag, type=kind, required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world)
    results = {}
    for name in args.scenarios.split(","):
        try:
            results[name] = run_scenario(name)
        except Exception:  # reported to the test, which fails naming the scenario
            results[name] = dict(crash=traceback.format_exc())
            if ps.model_parallel_is_initialized():
                ps.destroy_model_parallel()
    with open(os.path.join(args.out, f"rank{args.rank}.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    dist.destroy_process_group()
