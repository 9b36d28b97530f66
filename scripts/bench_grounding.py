"""Grounding benchmark: GRPO vs MAPO (and two ablations) on a learnable audio task, on CPU.

    python scripts/bench_grounding.py [--quick] [--seeds 0 1] [--arms grpo mapo mask_only attn_only]
                                      [--steps 120] [--warm-steps 1400] [--out results/grounding]

Per seed: a supervised warm start of a tiny Qwen2.5-Omni thinker on tone naming of
prior-free (``uniform``) clips (:mod:`mapo_verl.demo.warm_start`), then one RL run per arm
on long clips (K in :data:`RL_TONES`) of the ``cycle`` distribution, whose late text prior
tempts a policy to stop listening (docs/RESULTS.md, "Task"), through veRL's real
``main_ppo`` on the CPU backend (:mod:`mapo_verl.demo.launch`), all arms from the same
warm start with the same data, seeds and step budget:

- ``grpo``       recipes/grpo_grounding_tiny_cpu.yaml;
- ``mapo``       recipes/mapo_grounding_tiny_cpu.yaml (ω̃ and the attention loss);
- ``mask_only``  MAPO with η = 0 (``attention.coef=0``);
- ``attn_only``  MAPO with ω̃ ≡ 1 (``tau_base=1e6``: ω̃ = 1 to within 1e-5) and the attention loss.

Each final actor (and the warm start itself, arm ``warm_start``) is evaluated on held-out
clips (:mod:`mapo_verl.demo.grounding_eval`; ``--eval-split dev`` for design checks, so that
nothing is chosen on the ``test`` clips the reported numbers use). Results: one JSON per (seed, arm) in ``--out``
(they accumulate over invocations: a later run with other seeds adds to the table), then
``summary.md`` (mean ± sample std over seeds, with the seed count of every number), PNG
plots, and an overlay of the runs' training logs (``mapo-collapse-report --compare``).
Work files (models, data, run logs, checkpoints) go to ``--work``. ``--quick`` shrinks
everything so that the pipeline runs in a few minutes (CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "grpo": ("grpo_grounding_tiny_cpu", []),
    "mapo": ("mapo_grounding_tiny_cpu", []),
    "mask_only": ("mapo_grounding_tiny_cpu", ["actor_rollout_ref.actor.policy_loss.mapo.attention.coef=0"]),
    "attn_only": ("mapo_grounding_tiny_cpu", ["actor_rollout_ref.actor.policy_loss.mapo.tau_base=1000000.0"]),
}
BASELINE = "warm_start"
RL_TONES = (8, 12)  # K of the RL training clips (where the warm start still errs); evaluation also goes beyond
WARM_DISTRIBUTION = "uniform"  # the warm start listens; the late text prior comes only with RL
PLOTS = ("exact_accuracy_by_k.png", "position_accuracy_k12.png", "prior_follow_k12.png", "audio_mass_by_position.png",
         "delta_h_by_position.png", "perturbation_k12.png", "reward_over_steps.png")
_FULL = {"warm_steps": 1400, "pool": 2000, "steps": 50, "train_rows": 256, "val_rows": 16, "clips_per_k": 60}
_QUICK = {"warm_steps": 30, "pool": 64, "steps": 1, "train_rows": 8, "val_rows": 4, "clips_per_k": 4}


def versions() -> dict:
    import torch
    import transformers
    import verl

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "verl": getattr(verl, "__version__", "?"), "mapo_verl_commit": commit or "?", "cpu_count": os.cpu_count()}


def write_data(work: Path, seed: int, sizes: dict) -> dict[str, Path]:
    from mapo_verl.demo.data import write_parquet
    from mapo_verl.demo.grounding import make_examples, rows_of

    data = work / f"seed{seed}" / "data"
    train, val = data / f"train{sizes['train_rows']}.parquet", data / f"val{sizes['val_rows']}.parquet"
    if train.is_file() and val.is_file():  # deterministic from seed and size; another invocation may be reading them
        return {"train": train, "val": val}
    data.mkdir(parents=True, exist_ok=True)
    write_parquet(rows_of(make_examples(sizes["train_rows"], RL_TONES, "cycle", seed=20_000 + seed), "train"), train)
    write_parquet(rows_of(make_examples(sizes["val_rows"], RL_TONES, "cycle", seed=30_000 + seed), "val"), val)
    return {"train": train, "val": val}


def run_arm(arm: str, seed: int, model: Path, data: dict, steps: int, work: Path, quick: bool,
            overrides_all: tuple[str, ...] = ()) -> dict:
    """One RL run through the launcher; returns where its actor checkpoint and metrics are. A run that
    already finished with the same command (its ``run.json`` in the run directory) is reused, not
    retrained: a dev-split check and the test evaluation can share one run."""
    recipe, extra = ARMS[arm]
    run_root = work / f"seed{seed}" / arm
    overrides = [
        f"data.train_files={data['train']}", f"data.val_files={data['val']}", f"actor_rollout_ref.model.path={model}",
        f"trainer.total_training_steps={steps}", f"trainer.save_freq={steps}", "trainer.total_epochs=1000",
        f"trainer.test_freq={max(steps // 6, 1) if not quick else -1}", f"trainer.experiment_name={arm}",
        f"trainer.default_local_dir={run_root / recipe / 'checkpoints'}",
        f"data.seed={seed}", f"actor_rollout_ref.actor.data_loader_seed={seed}",
        f"actor_rollout_ref.actor.fsdp_config.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}", *extra,
        *overrides_all,
    ]
    command = [sys.executable, "-m", "mapo_verl.demo.launch", "--recipe", recipe, *overrides]
    env = dict(os.environ, MAPO_RUN_DIR=str(run_root), MAPO_DEMO_DIR=str(work / "demo_assets"))
    done = run_root / "run.json"
    if done.is_file() and json.loads(done.read_text())["command"] == shlex.join(["python", *command[1:]]):
        print(f"[bench] seed {seed} arm {arm}: reusing the finished run in {run_root}", flush=True)
        return json.loads(done.read_text())
    start = time.perf_counter()
    print(f"[bench] seed {seed} arm {arm}: {shlex.join(command[1:])}", flush=True)
    status = subprocess.call(command, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    run_dir = run_root / recipe
    if status != 0:
        raise RuntimeError(f"seed {seed} arm {arm}: main_ppo exited with {status}; full log {run_dir / 'main_ppo.log'}")
    run = {"command": shlex.join(["python", *command[1:]]), "wall_s": wall, "run_dir": str(run_dir),
           "checkpoint": str(run_dir / "checkpoints" / f"global_step_{steps}" / "actor")}
    done.write_text(json.dumps(run, indent=1))
    return run


def evaluate_model(model_dir: Path, checkpoint: str | None, sizes: dict, seed: int, quick: bool,
                   split: str = "test") -> dict:
    import torch

    from mapo_verl.demo.grounding_eval import EVAL_TONES, evaluate
    from mapo_verl.demo.grounding_model import load_actor_checkpoint, load_model

    model, processor = load_model(model_dir, attn_implementation="eager")
    if checkpoint is not None:
        load_actor_checkpoint(model, checkpoint)
    torch.manual_seed(seed)
    tones = (4, 12, 16) if quick else EVAL_TONES
    return evaluate(model, processor, clips_per_k=sizes["clips_per_k"], tones=tones, seed=seed, split=split)


def step_metrics(run_dir: str) -> dict:
    from mapo_verl.report.collapse import load_metrics

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    steps = load_metrics(path)
    keep = ("critic/score/mean", "response_length/mean", "timing_s/step", "mapo/omega_min", "mapo/omega_max",
            "mapo/audio_mass/late_early_ratio", "mapo/attn_loss", "mapo/delta_h_mean")
    out = {key: {str(s): steps[s][key] for s in sorted(steps) if key in steps[s]} for key in keep}
    for s in sorted(steps):
        for key, value in steps[s].items():
            if key.startswith("val-core/") and "/acc/" in key:
                out.setdefault(key, {})[str(s)] = value
    return {key: series for key, series in out.items() if series}


# ---- aggregation ----------------------------------------------------------------------


def load_results(out: Path) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: record}}`` of every result JSON in ``out``."""
    results: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob("seed*_*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["arm"], {})[int(record["seed"])] = record
    return results


def _stat(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), len(values)


def _cell(values: list[float]) -> str:
    mean, spread, n = _stat(values)
    if n == 0:
        return "n/a"
    return f"{mean:.3f} ± {spread:.3f} (n={n})" if n > 1 else f"{mean:.3f} (n=1)"


def _arm_order(results: dict) -> list[str]:
    return [arm for arm in (BASELINE, *ARMS) if arm in results]


def _late_mean(curve: list[float], late_from: int) -> float:
    return float(np.mean(curve[late_from:]))


def summary_rows(results: dict) -> list[tuple[str, list[str]]]:
    """Markdown table rows: per arm, the headline numbers (mean ± std over seeds, seed count)."""
    rows = []
    for arm in _arm_order(results):
        records = list(results[arm].values())
        ev = [r["evaluation"] for r in records]
        tones = [str(k) for k in ev[0]["tones"]]
        cells = []
        for dist in ("uniform", "cycle"):
            cells += [_cell([e["greedy"][dist][k]["exact"] for e in ev]) for k in tones]
        k12 = "12"
        cells.append(_cell([_late_mean(e["greedy"]["uniform"][k12]["position_acc"], 6) for e in ev]))
        cells.append(_cell([_late_mean(e["greedy"]["uniform"][k12]["prior_follow"], 5) for e in ev]))
        cells.append(_cell([_late_mean(e["teacher_forced"]["uniform"][k12]["audio_mass_layer_mean"], 6)
                            / float(np.mean(e["teacher_forced"]["uniform"][k12]["audio_mass_layer_mean"][:3]))
                            for e in ev]))
        cells.append(_cell([float(np.mean(e["perturbation"]["uniform"]["silence_vs_original"]["position_acc"]))
                            for e in ev]))
        cells.append(_cell([float(np.mean(e["perturbation"]["uniform"]["swap_vs_original"]["position_acc"]))
                            for e in ev]))
        cells.append(_cell([_late_mean(e["perturbation"]["uniform"]["swap_vs_swapped_clip"]["position_acc"], 6)
                            for e in ev]))
        cells.append(_cell([_late_mean(e["perturbation"]["uniform"]["silence_vs_original"]["prior_follow"], 5)
                            for e in ev]))
        cells.append(_cell([r.get("wall_s") for r in records]))
        rows.append((arm, cells))
    return rows


def _plot_arms(plt, results, path: Path, title: str, ylabel: str, xlabel: str, series_of, chance: float | None = None):
    figure, axis = plt.subplots(figsize=(7.6, 4.2))
    for arm in _arm_order(results):
        curves = [series_of(r["evaluation"]) for r in results[arm].values()]
        xs = curves[0][0]
        ys = np.array([c[1] for c in curves], dtype=float)
        mean = ys.mean(0)
        axis.plot(xs, mean, marker="o", label=f"{arm} (n={len(curves)})", linestyle="--" if arm == BASELINE else "-")
        if len(curves) > 1:
            axis.fill_between(xs, ys.min(0), ys.max(0), alpha=0.15)
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle=":", label="chance")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k12 = "12"
    _plot_arms(plt, results, out / "exact_accuracy_by_k.png", "Exact-sequence accuracy by K (uniform clips, greedy)",
               "exact accuracy", "K (tones in the clip)",
               lambda e: ([int(k) for k in e["greedy"]["uniform"]],
                          [v["exact"] for v in e["greedy"]["uniform"].values()]))
    _plot_arms(plt, results, out / "position_accuracy_k12.png",
               "Per-position naming accuracy, K = 12 (uniform, greedy)",
               "accuracy at position t", "position t",
               lambda e: (list(range(1, 13)), e["greedy"]["uniform"][k12]["position_acc"]), chance=1 / 3)
    _plot_arms(plt, results, out / "prior_follow_k12.png",
               "Prior-follow rate by position, K = 12 (uniform, greedy)",
               "share of answers whose word t continues the cycle", "position t",
               lambda e: (list(range(2, 13)), e["greedy"]["uniform"][k12]["prior_follow"]), chance=1 / 3)
    _plot_arms(plt, results, out / "audio_mass_by_position.png",
               "Audio attention mass by position, K = 12 (teacher forced, mean of layers)", "audio mass",
               "position t",
               lambda e: (list(range(1, 13)), e["teacher_forced"]["uniform"][k12]["audio_mass_layer_mean"]))
    _plot_arms(plt, results, out / "delta_h_by_position.png", "Δh = H(no audio) − H(audio) by position, K = 12",
               "Δh (nats)", "position t",
               lambda e: (list(range(1, 13)), e["teacher_forced"]["uniform"][k12]["delta_h"]))
    _plot_perturbation(plt, results, out / "perturbation_k12.png")
    _plot_rewards(plt, results, out / "reward_over_steps.png")
    return list(PLOTS)


def _plot_perturbation(plt, results, path: Path):
    conditions = [("original audio", lambda e: e["greedy"]["uniform"]["12"]),
                  ("silence", lambda e: e["perturbation"]["uniform"]["silence_vs_original"]),
                  ("other clip (vs original labels)", lambda e: e["perturbation"]["uniform"]["swap_vs_original"]),
                  ("other clip (vs its own labels)", lambda e: e["perturbation"]["uniform"]["swap_vs_swapped_clip"])]
    arms = _arm_order(results)
    figure, axis = plt.subplots(figsize=(8.4, 4.2))
    width = 0.8 / len(conditions)
    for index, (label, pick) in enumerate(conditions):
        means = [np.mean([np.mean(pick(r["evaluation"])["position_acc"]) for r in results[arm].values()])
                 for arm in arms]
        axis.bar(np.arange(len(arms)) + index * width, means, width=width, label=label)
    axis.axhline(1 / 3, color="grey", linestyle=":", label="chance")
    axis.set_xticks(np.arange(len(arms)) + 0.4 - width / 2, arms)
    axis.set_ylabel("mean per-position accuracy, K = 12")
    axis.set_title("Perturbation test (uniform clips): a grounded model falls to chance")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_rewards(plt, results, path: Path):
    figure, axis = plt.subplots(figsize=(7.6, 4.2))
    for arm in _arm_order(results):
        for seed, record in sorted(results[arm].items()):
            series = record.get("train_metrics", {}).get("critic/score/mean")
            if series:
                xs = [int(s) for s in series]
                ys = np.array(list(series.values()))
                window = min(10, len(ys))
                smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
                axis.plot(xs[window - 1:], smooth, label=f"{arm} seed {seed}")
    axis.set_title("Training reward (mean score, moving average over 10 steps)")
    axis.set_xlabel("training step")
    axis.set_ylabel("reward")
    axis.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_summary(results: dict, out: Path) -> Path:
    first = next(iter(next(iter(results.values())).values()))
    tones = first["evaluation"]["tones"]
    header = (["arm"] + [f"exact K={k} uniform" for k in tones] + [f"exact K={k} cycle" for k in tones]
              + ["pos. acc. t=7–12 (K=12)", "prior-follow t=7–12 (K=12)", "audio mass t=7–12 / t=1–3",
                 "silence pos. acc.", "other clip vs orig.", "other clip vs its own, t=7–12",
                 "silence prior-follow t=7–12", "wall s"])
    lines = ["# Grounding benchmark results", "",
             "Mean ± sample standard deviation over seeds; n = seeds behind each number. Greedy decoding on "
             f"held-out clips ({first['evaluation']['clips_per_k']} per K and distribution); RL trained on K in "
             f"{list(RL_TONES)} (`cycle`: late text prior), warm start on `{WARM_DISTRIBUTION}`; chance per position "
             "1/3. `uniform` clips have no text prior. Prior-follow = share of answers whose t-th word continues the "
             "cycle from their own (t−1)-th word (1/3 when naming `uniform` clips by ear, 1 when living on the prior); "
             "K=12 columns on `uniform` clips, perturbations at K=12.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, cells in summary_rows(results):
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    for arm in _arm_order(results):
        for seed, record in sorted(results[arm].items()):
            lines.append(f"- {arm}, seed {seed}: {record.get('steps', 0)} RL steps, "
                         f"wall {record.get('wall_s', 0):.0f} s"
                         + (f"; `{record['command']}`" if record.get("command") else ""))
    lines += ["", f"Versions: {json.dumps(first['versions'])}", ""]
    lines += [f"![{name}]({name})" for name in PLOTS]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def aggregate(out: Path, work: Path, seeds: list[int]) -> Path:
    from mapo_verl.report.collapse import write_comparison

    results = load_results(out)
    if not results:
        raise FileNotFoundError(f"no result JSON in {out}")
    write_plots(results, out)
    for seed in seeds:  # the training logs of this invocation's runs, overlaid
        arms = [arm for arm in ARMS if seed in results.get(arm, {})
                and Path(results[arm][seed]["run_dir"], "metrics.jsonl").is_file()]
        if len(arms) >= 2:
            write_comparison([results[arm][seed]["run_dir"] for arm in arms], out / f"compare_seed{seed}", labels=arms)
    return write_summary(results, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline in a few minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, help="RL steps per arm")
    parser.add_argument("--warm-steps", type=int, help="supervised warm-start steps")
    parser.add_argument("--pool", type=int, help="supervised warm-start training clips")
    parser.add_argument("--clips-per-k", type=int, help="evaluation clips per K and distribution")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "grounding")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "grounding")
    parser.add_argument("--rl-override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every RL arm (e.g. actor_rollout_ref.actor.optim.lr=1e-3)")
    parser.add_argument("--eval-split", default="test", choices=("test", "dev"),
                        help="evaluation clips: test (reported) or dev (design checks; default: %(default)s)")
    parser.add_argument("--skip-done", action="store_true", help="keep (seed, arm) results already in --out")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the warm start and the evaluation (default 1: on a shared 2-core "
                             "machine more threads oversubscribe and run several times slower)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    sizes = dict(_QUICK if args.quick else _FULL)
    for key, value in (("steps", args.steps), ("warm_steps", args.warm_steps), ("pool", args.pool),
                       ("clips_per_k", args.clips_per_k)):
        if value is not None:
            sizes[key] = value
    args.out.mkdir(parents=True, exist_ok=True)
    info = versions()
    from mapo_verl.demo.warm_start import warm_start

    for seed in args.seeds:
        work = args.work
        model = work / f"seed{seed}" / "warm_start"
        todo = [arm for arm in (BASELINE, *args.arms)
                if not (args.skip_done and (args.out / f"seed{seed}_{arm}.json").is_file())]
        if not todo:
            continue
        if not (model / "warm_start.json").is_file():
            print(f"[bench] seed {seed}: warm start ({sizes['warm_steps']} steps)", flush=True)
            warm_start(model, steps=sizes["warm_steps"], seed=seed, pool=sizes["pool"], distribution=WARM_DISTRIBUTION)
        warm = json.loads((model / "warm_start.json").read_text())
        data = write_data(work, seed, sizes)
        for arm in todo:
            if arm == BASELINE:
                run = {"wall_s": warm["wall_s"], "command": f"python -m mapo_verl.demo.warm_start --out {model} "
                       f"--steps {warm['steps']} --seed {seed} --pool {warm['pool']} "
                       f"--distribution {warm.get('distribution', 'cycle')}"}
                checkpoint, steps = None, 0
            else:
                run = run_arm(arm, seed, model, data, sizes["steps"], work, args.quick, tuple(args.rl_override))
                checkpoint, steps = run["checkpoint"], sizes["steps"]
            start = time.perf_counter()
            evaluation = evaluate_model(model, checkpoint, sizes, seed, args.quick, split=args.eval_split)
            record = {"arm": arm, "seed": seed, "steps": steps, "quick": args.quick, "sizes": sizes, "warm_start": warm,
                      "versions": info, **run, "eval_wall_s": time.perf_counter() - start, "evaluation": evaluation,
                      "train_metrics": step_metrics(run["run_dir"]) if "run_dir" in run else {}}
            (args.out / f"seed{seed}_{arm}.json").write_text(json.dumps(record, indent=1))
            print(f"[bench] seed {seed} arm {arm}: exact@12 uniform "
                  f"{evaluation['greedy']['uniform']['12']['exact']:.3f}, wall {run['wall_s']:.0f}s", flush=True)
    summary = aggregate(args.out, args.work, args.seeds)
    print(f"[bench] wrote {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
