"""Run a recipe of ``recipes/`` on this CPU machine through veRL's real entry point.

    python -m mapo_verl.demo.launch [--recipe mapo_tiny_cpu] [--config-path DIR] [hydra overrides...]

Prepares the embedded demo assets (:func:`mapo_verl.demo.ensure_demo_assets`), then runs
``python -m verl.trainer.main_ppo --config-path <recipes> --config-name <recipe> ...`` with
``VERL_PLATFORM=cpu`` (mapo_verl's CPU backend, for dry runs and CI). main_ppo's full output
(config dump, Ray and library warnings) goes to ``$MAPO_RUN_DIR/<recipe>/main_ppo.log``; the
console shows the progress bar, the step metrics and errors (``--verbose``: everything), and
the log's last lines when the run fails. The run's metrics go to
``$MAPO_RUN_DIR/<recipe>/metrics.jsonl`` (when the recipe logs to ``file``) and the collapse
report is written next to them. Exits with main_ppo's status.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CONSOLE_LINE", "INTERRUPTED", "default_recipes_dir", "main_ppo_command", "run_logged", "main"]

# Lines of main_ppo's output the console shows: progress, step metrics, errors, our own notes.
CONSOLE_LINE = re.compile(
    r"Training Progress|step:\d+ - |Traceback|(?:^|\) |\x1b\[0m )\w*(?:Error|Exception): |\[mapo_verl\]"
)
_FAILURE_TAIL_LINES = 60
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C
_STOP_GRACE_S = 30


def default_recipes_dir() -> Path:
    """The recipes that ship with the package: ``mapo_verl/recipes`` when installed from a wheel,
    ``recipes/`` of the source checkout otherwise (an editable install runs from the checkout)."""
    package = Path(__file__).resolve().parents[1]
    candidates = (package / "recipes", package.parent / "recipes")
    for candidate in candidates:
        if (candidate / "mapo_tiny_cpu.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no MAPO recipes in {[str(c) for c in candidates]}: pass --config-path")


def main_ppo_command(recipe: str, config_path: Path, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(config_path.resolve()),
        "--config-name",
        recipe,
        *overrides,
    ]


def _stop(process: subprocess.Popen, log) -> None:
    """Ctrl-C: interrupt main_ppo (its own process group, Ray's local cluster included), log what it
    still prints, and kill whatever of the group is left after :data:`_STOP_GRACE_S`."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        log.write(process.communicate(timeout=_STOP_GRACE_S)[0] or "")
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # Ray processes that outlived the driver
    except ProcessLookupError:
        pass
    process.wait()


def run_logged(command: list[str], env: dict, log_path: Path, verbose: bool = False) -> int:
    """Run ``command`` with its output appended to ``log_path`` (a resumed run keeps the log of the
    interrupted one); echo :data:`CONSOLE_LINE` lines (all if ``verbose``).

    Ctrl-C stops the command and everything it started (no traceback, no Ray process left) and
    returns :data:`INTERRUPTED`.
    """
    tail: list[str] = []
    with log_path.open("a") as log, subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,
    ) as process:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        try:
            for line in process.stdout:
                log.write(line)
                tail = (tail + [line])[-_FAILURE_TAIL_LINES:]
                if verbose or CONSOLE_LINE.search(line):
                    print(line, end="", flush=True)
            status = process.wait()
        except KeyboardInterrupt:
            _stop(process, log)
            print(f"\n[mapo_verl] interrupted: main_ppo and its Ray processes stopped; the same command resumes "
                  f"from the last checkpoint (trainer.save_freq > 0, trainer.resume_mode=auto); log: {log_path}",
                  flush=True)
            return INTERRUPTED
    if status != 0 and not verbose:
        print(f"[mapo_verl] last {len(tail)} lines of {log_path}:\n" + "".join(tail), end="", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mapo_tiny_cpu", help="recipe name (default: %(default)s)")
    parser.add_argument("--config-path", type=Path, default=None,
                        help="recipes directory (default: the installed package's)")
    parser.add_argument("--verbose", action="store_true", help="show main_ppo's whole output on the console")
    args, overrides = parser.parse_known_args(argv)

    config_path = args.config_path or default_recipes_dir()
    if not (config_path / f"{args.recipe}.yaml").is_file():
        parser.error(f"no recipe {args.recipe}.yaml in {config_path} (pass --config-path)")

    from mapo_verl.demo import demo_dir, ensure_demo_assets

    start = time.perf_counter()
    print(f"[mapo_verl] demo assets in {demo_dir()} ...", flush=True)
    assets = ensure_demo_assets()
    # the recipe picks its model among them (the tiny recipes: the full Omni checkpoint)
    print(f"[mapo_verl] demo assets ready: {assets.omni_model_dir.parent} ({time.perf_counter() - start:.1f}s)",
          flush=True)

    run_dir = Path(os.environ.get("MAPO_RUN_DIR", "runs")).resolve() / args.recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = run_dir / "metrics.jsonl"
    env = dict(os.environ, VERL_PLATFORM="cpu", VERL_FILE_LOGGER_PATH=str(metrics_file))
    # Ray folds lines of different workers that differ only in numbers (step, replica, checksum) into one:
    # the full log keeps every worker's line
    env.setdefault("RAY_DEDUP_LOGS", "0")
    command = main_ppo_command(args.recipe, config_path, overrides)
    print("[mapo_verl] VERL_PLATFORM=cpu " + " ".join(command[1:]), flush=True)
    log_path = run_dir / "main_ppo.log"
    print(f"[mapo_verl] full log: {log_path}", flush=True)
    status = run_logged(command, env, log_path, verbose=args.verbose)
    print(f"[mapo_verl] main_ppo exited with {status} after {time.perf_counter() - start:.0f}s", flush=True)
    if status == 0 and metrics_file.is_file() and metrics_file.stat().st_size:
        from mapo_verl.report.collapse import write_report

        summary = write_report(metrics_file, run_dir / "collapse_report")
        print(f"[mapo_verl] metrics: {metrics_file}\n[mapo_verl] collapse report: {summary}", flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before main_ppo started (demo assets) or while writing the report
        print("\n[mapo_verl] interrupted", flush=True)
        sys.exit(INTERRUPTED)
