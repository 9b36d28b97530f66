"""The collapse report on a synthetic run log: plots are written and the summary reads right."""

import json

import pytest

from mapo_verl.report.collapse import decile_curve, load_metrics, main


def write_run(path, steps=5):
    with path.open("w") as handle:
        for step in range(1, steps + 1):
            fade = 1.0 - 0.15 * step  # collapse gets worse with training
            data = {f"mapo/audio_mass/decile_{k}": 0.5 * (1 - fade * k / 10) for k in range(10)}
            data.update({f"mapo/delta_h/decile_{k}": 2.0 - 0.1 * k for k in range(9)})  # decile 9 empty
            data.update({f"mapo/omega_hist/bin_{k}": 0.1 for k in range(10)})
            data.update({"mapo/omega_hist/upper": 5.0, "mapo/attn_loss": 3.0 - 0.1 * step,
                         "mapo/audio_mass/late_early_ratio": 0.5 + 0.05 * step, "actor/pg_loss": 0.1,
                         "mapo/note": "strings are skipped"})
            handle.write(json.dumps({"step": step, "data": data}) + "\n")


def test_report_writes_plots_and_summary(tmp_path):
    run = tmp_path / "run.jsonl"
    write_run(run)
    assert main([str(run), "--out", str(tmp_path / "report")]) == 0
    for name in ("audio_mass_by_position.png", "delta_h_by_position.png", "omega_histogram.png",
                 "collapse_over_steps.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Steps logged: 5 (1–5)" in summary
    assert "falls along the response (ratio 0.75)" in summary


def test_metric_parsing(tmp_path):
    run = tmp_path / "run.jsonl"
    write_run(run, steps=2)
    steps = load_metrics(run)
    assert sorted(steps) == [1, 2] and "mapo/note" not in steps[1]
    curve = decile_curve(steps[2], "mapo/delta_h")
    assert curve[:2] == pytest.approx([2.0, 1.9]) and curve[9] != curve[9]  # NaN for the empty decile
    assert decile_curve(steps[2], "mapo/nothing") is None


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics at"):
        load_metrics(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "data": {}}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not a veRL file-logger record"):
        load_metrics(bad)
