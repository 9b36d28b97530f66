"""Faults through veRL's real main_ppo on CPU (the tiny recipes, via the launcher).

- The hang of the issue's first row: a prompt with one ``<audio>`` marker and a literal
  ``<|AUDIO|>`` in the question, with the load-time checks switched off so that it reaches the
  rollout. It used to hang for good; now the run ends with an error naming the row.
- A 4-step MAPO run over a file with bad rows (filtered at load, reported in the run directory,
  counted in ``mapo/bad_rows``) is interrupted with Ctrl-C after its step-2 checkpoint: the
  launcher exits 130 without a traceback and leaves no process of the run behind; the same
  command resumes, and the metrics file and the collapse report cover steps 1-4.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import write_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # minutes on 2 idle cores; far more on a busy box
# 4 responses per prompt instead of 8: half the rollout and update work, the same code paths
_SMALL = ("actor_rollout_ref.rollout.n=4",)


def _launch(recipe: str, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mapo_verl.demo.launch", "--recipe", recipe, *overrides]


def _env(run_dir: Path) -> dict:
    return dict(os.environ, MAPO_RUN_DIR=str(run_dir))


def test_stray_placeholder_reaching_the_rollout_ends_the_run_naming_the_row(demo_assets, good_rows, tmp_path):
    rows = [{**good_rows[0], "prompt": [{"role": "user", "content": "<audio>How many <|AUDIO|> beeps are there?"}]},
            *good_rows[1:4]]
    train = write_rows(rows, tmp_path / "stray.parquet")
    command = _launch("grpo_tiny_cpu", tmp_path, f"data.train_files={train}", "data.shuffle=false",
                      "trainer.total_training_steps=1", "data.row_checks.enable=false", *_SMALL)
    start = time.perf_counter()
    result = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - start
    log = (tmp_path / "grpo_tiny_cpu" / "main_ppo.log").read_text()
    print(f"stray placeholder run ended after {wall:.0f}s with {result.returncode}")
    assert result.returncode != 0
    index = rows[0]["extra_info"]["index"]
    assert "RolloutFailureError" in log and f"index={index}," in log and "StopIteration" in log
    assert f"index={index}," in result.stdout  # the launcher's console shows the named row


def _checkpointed_step(run_dir: Path) -> int:
    marker = run_dir / "mapo_tiny_cpu" / "checkpoints" / "latest_checkpointed_iteration.txt"
    try:
        return int(marker.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _processes_of(run_dir: Path) -> list[str]:
    """Command lines of live processes whose environment holds this run's MAPO_RUN_DIR."""
    needle = f"MAPO_RUN_DIR={run_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:
            continue
    return found


def test_interrupt_then_resume_keeps_every_step(demo_assets, good_rows, tmp_path):
    bad = [{**good_rows[8], "prompt": [{"role": "user", "content": "<audio>Is <|AUDIO|> higher?"}]},
           {**good_rows[9], "audios": None}]
    rows = [*bad, *good_rows[10:]]
    train = write_rows(rows, tmp_path / "with_bad_rows.parquet")
    command = _launch("mapo_tiny_cpu", tmp_path, f"data.train_files={train}", "trainer.total_training_steps=4",
                      "trainer.save_freq=1", *_SMALL)
    env = _env(tmp_path)
    run_dir = tmp_path / "mapo_tiny_cpu"

    # A terminal's foreground process takes Ctrl-C; a shell's background job (e.g. a CI script started with
    # `&`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: restore the default.
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 900
        while _checkpointed_step(tmp_path) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, "the first run ended before its step-2 checkpoint"
        first.send_signal(signal.SIGINT)  # Ctrl-C reaches the launcher (its terminal's foreground process)
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, output[-3000:]
    assert "[mapo_verl] interrupted" in output
    assert "Traceback" not in output.split("[mapo_verl] interrupted")[-1] and "KeyboardInterrupt" not in output
    time.sleep(2)
    assert _processes_of(tmp_path) == []
    interrupted_at = _checkpointed_step(tmp_path)
    assert interrupted_at in (2, 3)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stdout[-4000:]
    log = (run_dir / "main_ppo.log").read_text()
    assert f"Resuming from" in log or f"global_step_{interrupted_at}" in log

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(record["data"]["mapo/bad_rows"] == 2 for record in records)

    from mapo_verl.report.collapse import load_metrics

    assert sorted(load_metrics(run_dir / "metrics.jsonl")) == [1, 2, 3, 4]
    summary = run_dir / "collapse_report" / "summary.md"
    assert summary.is_file() and summary.stat().st_mtime > (run_dir / "metrics.jsonl").stat().st_mtime - 60

    report = json.loads((run_dir / "row_checks_with_bad_rows.json").read_text())
    named = {(row["row"], row["index"], row["reason"]) for row in report["bad_rows"]["rows"]}
    assert named == {(0, bad[0]["extra_info"]["index"], "stray_placeholder"),
                     (1, bad[1]["extra_info"]["index"], "marker_clip_mismatch")}
