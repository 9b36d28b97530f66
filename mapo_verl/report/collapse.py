"""Collapse report: plots and a markdown summary of a MAPO (or GRPO) run's modality signals.

Reads the metrics a run logged (veRL's ``file`` logger JSONL, or a TensorBoard log
directory) and writes PNG plots:

- ``audio_mass_by_position.png`` — audio attention mass vs relative response position
  (``mapo/audio_mass/decile_k``) for early, middle and late training steps;
- ``delta_h_by_position.png`` — Δh = H_abl − H_pol by response-position decile;
- ``omega_histogram.png`` — the distribution of ω̃ (first and last step);
- ``collapse_over_steps.png`` — late/early ratios and the attention loss over steps;

plus ``summary.md``. Late-stage modality collapse shows as curves that fall towards the
end of the response and ratios below 1.

Usage: ``mapo-collapse-report RUN.jsonl --out report/`` (or ``python -m mapo_verl.report.collapse``).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
from typing import Iterable

__all__ = ["load_metrics", "decile_curve", "write_report", "main"]

_DECILE = re.compile(r"^(?P<prefix>.+)/decile_(?P<k>\d)$")
_HIST = re.compile(r"^mapo/omega_hist/bin_(?P<k>\d)$")


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
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_histogram(plt, steps, path: pathlib.Path):
    with_hist = [s for s in sorted(steps) if any(_HIST.match(k) for k in steps[s])]
    if not with_hist:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    chosen = sorted({with_hist[0], with_hist[-1]})
    for offset, step in enumerate(chosen):
        metrics = steps[step]
        upper = metrics.get("mapo/omega_hist/upper", 1.0)
        width = upper / 10
        fractions = [metrics.get(f"mapo/omega_hist/bin_{k}", 0.0) for k in range(10)]
        lefts = [k * width + offset * width / len(chosen) for k in range(10)]
        axis.bar(lefts, fractions, width=width / len(chosen), align="edge", label=f"step {step}", alpha=0.8)
    axis.set_xlabel("ω̃ (relevance weight)")
    _finish(plt, figure, axis, "fraction of response tokens", "ω̃ histogram", path)
    return chosen


def _plot_over_steps(plt, steps, path: pathlib.Path):
    series = {
        "mapo/audio_mass/late_early_ratio": "audio mass late/early",
        "mapo/delta_h/late_early_ratio": "Δh late/early",
        "mapo/attn_loss": "attention loss",
    }
    present = {k: v for k, v in series.items() if any(k in steps[s] for s in steps)}
    if not present:
        return []
    figure, axes = plt.subplots(len(present), 1, figsize=(6.4, 2.4 * len(present)), sharex=True, squeeze=False)
    for axis, (key, label) in zip(axes[:, 0], present.items()):
        xs = [s for s in sorted(steps) if key in steps[s]]
        axis.plot(xs, [steps[s][key] for s in xs], marker=".")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training step")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return list(present)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


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
    mass_steps = _plot_curves(plt, steps, "mapo/audio_mass", "audio attention mass a_t",
                              "Audio attention mass by response position", out / "audio_mass_by_position.png")
    if mass_steps:
        written.append(("audio_mass_by_position.png", "audio attention mass by relative position"))
    delta_steps = _plot_curves(plt, steps, "mapo/delta_h", "Δh = H_abl − H_pol",
                               "Audio dependence Δh by response position", out / "delta_h_by_position.png")
    if delta_steps:
        written.append(("delta_h_by_position.png", "Δh by relative position"))
    if _plot_histogram(plt, steps, out / "omega_histogram.png"):
        written.append(("omega_histogram.png", "ω̃ histogram"))
    if _plot_over_steps(plt, steps, out / "collapse_over_steps.png"):
        written.append(("collapse_over_steps.png", "late/early ratios and attention loss over steps"))

    last = steps[max(steps)]
    lines = [
        f"# Collapse report for `{pathlib.Path(source).name}`",
        "",
        f"Steps logged: {len(steps)} ({min(steps)}–{max(steps)}).",
        "",
        "| metric (last step) | value |",
        "|---|---|",
    ]
    for key in ("mapo/audio_mass/late_early_ratio", "mapo/delta_h/late_early_ratio", "mapo/attn_loss",
                "mapo/audio_mass", "mapo/delta_h_mean", "mapo/omega_mean", "mapo/omega_capped_frac",
                "mapo/ablated_over_old_log_prob"):
        lines.append(f"| `{key}` | {_fmt(last.get(key))} |")
    ratio = last.get("mapo/audio_mass/late_early_ratio")
    lines += ["", "A late/early ratio below 1 means late response tokens attend to the audio (or depend on it) "
              "less than early ones: the signature of late-stage modality collapse."]
    if ratio is not None:
        verdict = "falls" if ratio < 1 else "does not fall"
        lines.append(f"At the last step the audio attention mass {verdict} along the response (ratio {ratio:.3g}).")
    if not written:
        lines += ["", "No `mapo/*` position metrics were found: was the run a MAPO run (trainer.v1.trainer_mode=mapo)?"]
    lines += [""] + [f"![{title}]({name})" for name, title in written]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="veRL file-logger .jsonl of the run, or its TensorBoard log directory")
    parser.add_argument("--out", default="collapse_report", help="output directory (default: collapse_report)")
    args = parser.parse_args(argv)
    summary = write_report(args.metrics, args.out)
    print(f"wrote {summary} and its plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
