"""Collapse report: plots and a markdown summary of a MAPO (or GRPO) run's modality signals.

Reads the metrics a run logged (veRL's ``file`` logger JSONL, or a TensorBoard log
directory) and writes PNG plots:

- ``audio_mass_by_position.png`` — audio attention mass vs relative response position
  (``mapo/audio_mass/decile_k``) for early, middle and late training steps; a run on other
  modalities logs ``mapo/<modality>_mass`` (e.g. ``image``) and gets ``<modality>_mass_by_position.png``;
- ``delta_h_by_position.png`` — Δh = H_abl − H_pol by response-position decile;
- ``omega_histogram.png`` — the distribution of ω̃ (first and last step), in bins over the
  logged range of ω̃, which the title states;
- ``collapse_over_steps.png`` — reward, late/early ratios and the attention loss over steps;

plus ``summary.md``. Late-stage modality collapse shows as curves that fall towards the
end of the response and ratios below 1. A Δh late/early ratio is only reported where the
early Δh is clearly positive (at least :data:`MIN_EARLY_DELTA_H` nats) and the late one is
not negative: a ratio of near-zero numbers of mixed sign means nothing, and the summary says so.

``--compare`` overlays several runs (e.g. a GRPO run and its MAPO twin): audio mass and Δh by
position at each run's last step, reward and accuracy over steps, and a table of last-step
values (``compare.md``).

Usage: ``mapo-collapse-report RUN.jsonl --out report/``,
``mapo-collapse-report --compare runs/grpo_tiny_cpu runs/mapo_tiny_cpu --out compare/`` (a run
directory stands for its ``metrics.jsonl``), or ``python -m mapo_verl.report.collapse``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
from typing import Iterable

from mapo_verl.core.contract import AUDIO_LABEL, LATE_EARLY_SUFFIX, LIFT_STEM, MASS_STEM, modality_metric

__all__ = ["MIN_EARLY_DELTA_H", "load_metrics", "decile_curve", "delta_h_ratio", "modality_of", "write_report",
           "write_comparison", "main"]

_DECILE = re.compile(r"^(?P<prefix>.+)/decile_(?P<k>\d)$")
_HIST = re.compile(r"^mapo/omega_hist/bin_(?P<k>\d)$")
# Below this early-window mean Δh (nats) a late/early ratio is noise of mixed sign, not a signal.
MIN_EARLY_DELTA_H = 0.05
# Step-wise curves: the reward and the task accuracy veRL logs (validation accuracy when validating).
_REWARD_KEY = "critic/score/mean"
# The attention-mass metric of whatever modalities the run acted on: mapo/<modality>_mass[/...]
_MASS_KEY = re.compile(rf"^mapo/(?P<modality>[a-z]+(?:\+[a-z]+)*)_{MASS_STEM}(?:/|$)")
_ACCURACY = re.compile(r"^val-core/.*/acc/mean@\d+$")


def load_metrics(source: str | pathlib.Path) -> dict[int, dict[str, float]]:
    """``{step: {metric: value}}`` from a veRL file-logger JSONL or a TensorBoard log directory."""
    path = pathlib.Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}: pass the run's .jsonl (trainer.logger=[file]) or TB dir")
    steps: dict[int, dict[str, float]] = {}
    if path.is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = list(path.rglob("events.out.tfevents.*"))
        if not events:
            raise FileNotFoundError(f"{path} holds no TensorBoard event files")
        for event_file in events:
            accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                for event in accumulator.Scalars(tag):
                    steps.setdefault(int(event.step), {})[tag] = float(event.value)
        return steps
    with path.open() as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step, data = int(record["step"]), record["data"]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_number} is not a veRL file-logger record: {err}") from err
            numeric = {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            steps.setdefault(step, {}).update(numeric)
    return steps


def decile_curve(metrics: dict[str, float], prefix: str) -> list[float] | None:
    """The 10 decile values of ``prefix`` (NaN where a decile was empty), or None if absent."""
    values = [math.nan] * 10
    found = False
    for key, value in metrics.items():
        match = _DECILE.match(key)
        if match and match["prefix"] == prefix:
            values[int(match["k"])] = value
            found = True
    return values if found else None


def _pick_steps(steps: Iterable[int], count: int = 3) -> list[int]:
    ordered = sorted(steps)
    if len(ordered) <= count:
        return ordered
    return sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]})


def _plot_curves(plt, steps: dict[int, dict[str, float]], prefix: str, ylabel: str, title: str, path: pathlib.Path):
    with_curve = [s for s in sorted(steps) if decile_curve(steps[s], prefix) is not None]
    if not with_curve:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    positions = [(k + 0.5) / 10 for k in range(10)]
    chosen = _pick_steps(with_curve)
    colors = plt.cm.viridis([i / max(len(chosen) - 1, 1) for i in range(len(chosen))])
    for color, step in zip(colors, chosen):
        axis.plot(positions, decile_curve(steps[step], prefix), marker="o", color=color, label=f"step {step}")
    axis.set_xlabel("relative position in the response (t / T)")
    axis.set_xlim(0, 1)
    axis.grid(alpha=0.3)
    _finish(plt, figure, axis, ylabel, title, path)
    return chosen


def _finish(plt, figure, axis, ylabel: str, title: str, path: pathlib.Path) -> None:
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    # outside the axes, so that it never covers a curve
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_histogram(plt, steps, path: pathlib.Path):
    with_hist = [s for s in sorted(steps) if any(_HIST.match(k) for k in steps[s])]
    if not with_hist:
        return None
    figure, axis = plt.subplots(figsize=(7.4, 4.0))
    chosen = sorted({with_hist[0], with_hist[-1]})
    ranges = []
    for step in chosen:
        metrics = steps[step]
        # older logs binned [0, upper]; newer ones bin the data's own range [lower, upper]
        lower, upper = metrics.get("mapo/omega_hist/lower", 0.0), metrics.get("mapo/omega_hist/upper", 1.0)
        edges = [lower + (upper - lower) * k / 10 for k in range(11)]
        fractions = [metrics.get(f"mapo/omega_hist/bin_{k}", 0.0) for k in range(10)]
        axis.stairs(fractions, edges, fill=True, alpha=0.45, label=f"step {step}")
        ranges.append(f"step {step}: [{lower:.6g}, {upper:.6g}]")
    axis.ticklabel_format(axis="x", useOffset=False)
    axis.set_xlabel("ω̃ (relevance weight); 10 bins over each step's logged range")
    _finish(plt, figure, axis, "fraction of response tokens", "ω̃ histogram — range " + "; ".join(ranges), path)
    return chosen


def delta_h_ratio(metrics: dict[str, float]) -> tuple[float | None, str]:
    """The Δh late/early ratio of one step and why it is (not) meaningful.

    Computed from the decile means (the last two over the first two deciles). Reported only
    when the early mean is at least :data:`MIN_EARLY_DELTA_H` nats and the late mean is not
    negative; otherwise ``(None, reason)``.
    """
    curve = decile_curve(metrics, "mapo/delta_h")
    if curve is None:
        return None, "no Δh by position was logged"
    early = [v for v in curve[:2] if not math.isnan(v)]
    late = [v for v in curve[-2:] if not math.isnan(v)]
    if not early or not late:
        return None, "the first or last 20 % of response positions hold no tokens"
    early_mean, late_mean = sum(early) / len(early), sum(late) / len(late)
    if early_mean < MIN_EARLY_DELTA_H or late_mean < 0:
        return None, (f"early Δh {early_mean:.3g} and late Δh {late_mean:.3g} nats: a ratio needs a clearly positive "
                      f"early Δh (≥ {MIN_EARLY_DELTA_H}) and a non-negative late one")
    return late_mean / early_mean, f"late {late_mean:.3g} / early {early_mean:.3g} nats"


def _integer_steps(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def modality_of(*runs: dict[int, dict[str, float]]) -> str:
    """The modality label (``audio``, ``image``, ``audio+image``, …) of the first ``mapo/<modality>_mass``
    metric the runs logged; ``audio`` when none did (a GRPO run)."""
    for steps in runs:
        for row in steps.values():
            for key in row:
                if match := _MASS_KEY.match(key):
                    return match["modality"]
    return AUDIO_LABEL


def _mass_ratio_key(modality: str) -> str:
    return f"{modality_metric(modality, MASS_STEM)}/{LATE_EARLY_SUFFIX}"


def _step_series(steps: dict[int, dict[str, float]], modality: str) -> dict[str, tuple[str, list[int], list[float]]]:
    """Per-step curves worth plotting: ``{key: (label, steps, values)}`` (meaningful Δh ratios only)."""
    out = {}
    for key, label in ((_REWARD_KEY, "reward (mean score)"),
                       *[(k, "accuracy " + k.split("/")[1]) for k in sorted({k for s in steps.values() for k in s
                                                                              if _ACCURACY.match(k)})],
                       (_mass_ratio_key(modality), f"{modality} mass late/early"),
                       ("mapo/attn_loss", "attention loss")):
        xs = [s for s in sorted(steps) if key in steps[s]]
        if xs:
            out[key] = (label, xs, [steps[s][key] for s in xs])
    ratios = {s: delta_h_ratio(steps[s])[0] for s in sorted(steps)}
    xs = [s for s, r in ratios.items() if r is not None]
    if xs:
        out["delta_h_ratio"] = ("Δh late/early", xs, [ratios[s] for s in xs])
    return out


def _plot_over_steps(plt, steps, modality: str, path: pathlib.Path):
    present = _step_series(steps, modality)
    if not present:
        return []
    figure, axes = plt.subplots(len(present), 1, figsize=(6.4, 2.4 * len(present)), sharex=True, squeeze=False)
    for axis, (label, xs, ys) in zip(axes[:, 0], present.values()):
        axis.plot(xs, ys, marker=".")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training step")
    _integer_steps(axes[-1, 0])
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return list(present)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _summary_lines(name: str, steps: dict[int, dict[str, float]], modality: str, any_plot: bool) -> list[str]:
    """The summary's table of last-step metrics and the sentences that read them."""
    last = steps[max(steps)]
    mass, ratio_key = modality_metric(modality, MASS_STEM), _mass_ratio_key(modality)
    lines = [
        f"# Collapse report for `{name}`",
        "",
        f"Steps logged: {len(steps)} ({min(steps)}–{max(steps)}).",
        "",
        "| metric (last step) | value |",
        "|---|---|",
    ]
    for key in (_REWARD_KEY, ratio_key, "mapo/attn_loss", mass, modality_metric(modality, LIFT_STEM),
                f"{mass}_failed", f"{mass}_success", "mapo/nu_tilde_mean",
                "mapo/delta_h_mean", "mapo/omega_mean", "mapo/omega_min", "mapo/omega_max", "mapo/mask_clip_frac",
                "mapo/ablated_over_old_log_prob"):
        lines.append(f"| `{key}` | {_fmt(last.get(key))} |")
    ratio = last.get(ratio_key)
    lines += ["", f"A late/early ratio below 1 means late response tokens attend to the {modality} (or depend on it) "
              "less than early ones: the signature of late-stage modality collapse."]
    if ratio is not None:
        verdict = "falls" if ratio < 1 else "does not fall"
        lines.append(f"At the last step the {modality} attention mass {verdict} along the response "
                     f"(ratio {ratio:.3g}).")
    if decile_curve(last, "mapo/delta_h") is not None:
        dh_ratio, why = delta_h_ratio(last)
        lines.append(f"Δh late/early ratio at the last step: {dh_ratio:.3g} ({why})." if dh_ratio is not None
                     else f"Δh late/early ratio at the last step: not reported ({why}).")
    if "mapo/omega_min" in last:
        upper = last.get("mapo/omega_max", math.nan)
        lines.append(f"ω̃ at the last step spans [{last['mapo/omega_min']:.6g}, {upper:.6g}].")
    if not any_plot:
        lines += ["", "No `mapo/*` position metrics were found: was the run a MAPO run (trainer.v1.trainer_mode=mapo)?"]
    return lines


def write_report(source: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Write the plots and ``summary.md`` into ``out_dir``; returns the summary's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = load_metrics(source)
    if not steps:
        raise ValueError(f"{source} holds no logged steps")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    modality = modality_of(steps)
    mass_png = f"{modality}_mass_by_position.png"
    mass_steps = _plot_curves(plt, steps, modality_metric(modality, MASS_STEM), f"{modality} attention mass a_t",
                              f"{modality.capitalize()} attention mass by response position", out / mass_png)
    if mass_steps:
        written.append((mass_png, f"{modality} attention mass by relative position"))
    delta_steps = _plot_curves(plt, steps, "mapo/delta_h", "Δh = H_abl − H_pol",
                               f"{modality.capitalize()} dependence Δh by response position",
                               out / "delta_h_by_position.png")
    if delta_steps:
        written.append(("delta_h_by_position.png", "Δh by relative position"))
    if _plot_histogram(plt, steps, out / "omega_histogram.png"):
        written.append(("omega_histogram.png", "ω̃ histogram"))
    if _plot_over_steps(plt, steps, modality, out / "collapse_over_steps.png"):
        written.append(("collapse_over_steps.png", "reward, late/early ratios and attention loss over steps"))

    lines = _summary_lines(pathlib.Path(source).name, steps, modality, any_plot=bool(written))
    lines += [""] + [f"![{title}]({name})" for name, title in written]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _run_source(source: str | pathlib.Path) -> tuple[str, pathlib.Path]:
    """``(label, metrics path)``: a run directory stands for its ``metrics.jsonl`` and is labelled by its name."""
    path = pathlib.Path(source)
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        return path.name, path / "metrics.jsonl"
    return (path.parent.name if path.name == "metrics.jsonl" else path.stem), path


def _overlay_positions(plt, runs, prefix: str, ylabel: str, title: str, path: pathlib.Path) -> list[str]:
    positions = [(k + 0.5) / 10 for k in range(10)]
    figure, axis = plt.subplots(figsize=(7.4, 4.0))
    shown = []
    for index, (label, steps) in enumerate(runs.items()):
        with_curve = [s for s in sorted(steps) if decile_curve(steps[s], prefix) is not None]
        if with_curve:
            step = with_curve[-1]
            axis.plot(positions, decile_curve(steps[step], prefix), marker="o", label=f"{label} (step {step})",
                      color=f"C{index}")
            shown.append(label)
    if not shown:
        plt.close(figure)
        return []
    axis.set_xlabel("relative position in the response (t / T)")
    axis.set_xlim(0, 1)
    axis.grid(alpha=0.3)
    _finish(plt, figure, axis, ylabel, title, path)
    return shown


def _load_runs(sources: list[str | pathlib.Path], labels: list[str] | None) -> dict[str, dict[int, dict[str, float]]]:
    """Each run's logged steps under its label (a repeated label gets its position appended)."""
    if len(sources) < 2:
        raise ValueError(f"--compare needs at least two runs, got {len(sources)}")
    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"{len(labels)} labels for {len(sources)} runs")
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for index, source in enumerate(sources):
        label, path = _run_source(source)
        label = labels[index] if labels is not None else label
        steps = load_metrics(path)
        if not steps:
            raise ValueError(f"{path} holds no logged steps")
        runs[label if label not in runs else f"{label} ({len(runs) + 1})"] = steps
    return runs


def _plot_runs_over_steps(plt, runs: dict[str, dict[int, dict[str, float]]], modality: str,
                          path: pathlib.Path) -> bool:
    """Reward, accuracy and the modality-mass ratio over steps, one panel each, one colour per run; False when
    no run logged any of them."""
    series = {label: _step_series(steps, modality) for label, steps in runs.items()}
    keys = [k for k in (_REWARD_KEY, *sorted({k for s in series.values() for k in s if _ACCURACY.match(k)}),
                        _mass_ratio_key(modality)) if any(k in s for s in series.values())]
    if not keys:
        return False
    figure, axes = plt.subplots(len(keys), 1, figsize=(7.4, 2.6 * len(keys)), sharex=True, squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        for index, (label, run_series) in enumerate(series.items()):
            if key in run_series:
                ylabel, xs, ys = run_series[key]
                axis.plot(xs, ys, marker=".", label=label, color=f"C{index}")
                axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small")
    axes[-1, 0].set_xlabel("training step")
    _integer_steps(axes[-1, 0])
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _comparison_rows(runs: dict[str, dict[int, dict[str, float]]], modality: str) -> list[str]:
    lines = ["| run | steps | reward (last step) | reward (mean of last 20 % of steps) | "
             f"{modality} mass late/early | Δh late/early | ω̃ range |", "|---|---|---|---|---|---|---|"]
    for label, steps in runs.items():
        last = steps[max(steps)]
        tail = sorted(steps)[-max(1, len(steps) // 5):]
        rewards = [steps[s][_REWARD_KEY] for s in tail if _REWARD_KEY in steps[s]]
        dh_ratio, _ = delta_h_ratio(last)
        omega = (f"[{last['mapo/omega_min']:.6g}, {last['mapo/omega_max']:.6g}]"
                 if "mapo/omega_min" in last and "mapo/omega_max" in last else "n/a")
        lines.append(f"| {label} | {len(steps)} | {_fmt(last.get(_REWARD_KEY))} | "
                     f"{_fmt(sum(rewards) / len(rewards) if rewards else None)} | "
                     f"{_fmt(last.get(_mass_ratio_key(modality)))} | {_fmt(dh_ratio)} | {omega} |")
    return lines


def write_comparison(sources: list[str | pathlib.Path], out_dir: str | pathlib.Path,
                     labels: list[str] | None = None) -> pathlib.Path:
    """Overlay several runs into ``out_dir`` (plots and ``compare.md``); returns the markdown's path.
    ``labels`` name the runs (default: their directory names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _load_runs(sources, labels)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    modality = modality_of(*runs.values())
    for prefix, ylabel, name in ((modality_metric(modality, MASS_STEM), f"{modality} attention mass a_t",
                                  f"compare_{modality}_mass_by_position.png"),
                                 ("mapo/delta_h", "Δh = H_abl − H_pol", "compare_delta_h_by_position.png")):
        shown = _overlay_positions(plt, runs, prefix, ylabel, f"{ylabel.split(' =')[0]} by position, last step",
                                   out / name)
        if shown:
            written.append((name, f"{prefix} by position ({', '.join(shown)})"))
    if _plot_runs_over_steps(plt, runs, modality, out / "compare_over_steps.png"):
        written.append(("compare_over_steps.png", f"reward, accuracy and {modality}-mass ratio over steps"))
    lines = ["# Run comparison", "", *_comparison_rows(runs, modality)]
    lines += ["", "Position curves and ratios exist only for runs that logged `mapo/*` metrics (MAPO runs); "
              "a Δh ratio is shown only where it is meaningful (see `delta_h_ratio`)."]
    lines += [""] + [f"![{title}]({name})" for name, title in written]
    summary = out / "compare.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="?",
                        help="veRL file-logger .jsonl of the run (or its directory), or its TensorBoard log directory")
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="overlay several runs (run directories with metrics.jsonl, .jsonl files or TB dirs)")
    parser.add_argument("--out", default=None, help="output directory (default: collapse_report, or compare)")
    args = parser.parse_args(argv)
    if (args.metrics is None) == (args.compare is None):
        parser.error("give either one run's metrics or --compare RUN RUN [...]")
    if args.compare:
        summary = write_comparison(args.compare, args.out or "compare")
    else:
        summary = write_report(_run_source(args.metrics)[1], args.out or "collapse_report")
    print(f"wrote {summary} and its plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
