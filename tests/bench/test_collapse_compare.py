"""Collapse report fixes and ``--compare``: ω̃ bins fit the logged range, the Δh ratio is only
reported where it means something, several runs overlay into one set of plots and a table."""

import json

import pytest

from mapo_verl.report.collapse import MIN_EARLY_DELTA_H, delta_h_ratio, main

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, steps, delta_h, omega_range=(0.9997, 1.0007), with_mapo=True, reward=0.5):
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as handle:
        for step in range(1, steps + 1):
            data = {"critic/score/mean": reward + 0.01 * step, "val-core/tones/acc/mean@1": 0.1 * step}
            if with_mapo:
                data.update({f"mapo/audio_mass/decile_{k}": 0.8 - 0.03 * k for k in range(10)})
                data.update({f"mapo/delta_h/decile_{k}": value for k, value in enumerate(delta_h)})
                data.update({f"mapo/omega_hist/bin_{k}": 0.1 for k in range(10)})
                data.update({"mapo/omega_hist/lower": omega_range[0], "mapo/omega_hist/upper": omega_range[1],
                             "mapo/omega_min": omega_range[0], "mapo/omega_max": omega_range[1],
                             "mapo/audio_mass/late_early_ratio": 0.7})
            handle.write(json.dumps({"step": step, "data": data}) + "\n")
    return run_dir


def test_delta_h_ratio_only_where_meaningful():
    falling = [1.0, 0.8] + [0.5] * 6 + [0.3, 0.1]
    ratio, why = delta_h_ratio({f"mapo/delta_h/decile_{k}": v for k, v in enumerate(falling)})
    assert ratio == pytest.approx(0.2 / 0.9) and "nats" in why
    tiny_mixed = [2e-4, -1e-4] + [0.0] * 6 + [-3e-4, 1e-4]  # the random demo model: noise of mixed sign
    ratio, why = delta_h_ratio({f"mapo/delta_h/decile_{k}": v for k, v in enumerate(tiny_mixed)})
    assert ratio is None and f"≥ {MIN_EARLY_DELTA_H}" in why
    negative_late = [1.0, 1.0] + [0.0] * 6 + [-0.5, -0.5]
    assert delta_h_ratio({f"mapo/delta_h/decile_{k}": v for k, v in enumerate(negative_late)})[0] is None
    assert delta_h_ratio({})[0] is None


def test_report_states_the_omega_range_and_skips_a_meaningless_ratio(tmp_path):
    run = write_run(tmp_path / "mapo", steps=4, delta_h=[2e-4, -1e-4] + [0.0] * 6 + [-3e-4, 1e-4])
    assert main([str(run), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "ω̃ at the last step spans [0.9997, 1.0007]" in summary
    assert "Δh late/early ratio at the last step: not reported" in summary
    assert (tmp_path / "report" / "omega_histogram.png").read_bytes()[:8] == PNG


def test_compare_overlays_runs(tmp_path):
    grpo = write_run(tmp_path / "runs" / "grpo_x", steps=5, delta_h=[], with_mapo=False, reward=0.4)
    mapo = write_run(tmp_path / "runs" / "mapo_x", steps=5, delta_h=[1.0, 0.8] + [0.5] * 6 + [0.3, 0.1])
    out = tmp_path / "compare"
    assert main(["--compare", str(grpo), str(mapo / "metrics.jsonl"), "--out", str(out)]) == 0
    for name in ("compare_audio_mass_by_position.png", "compare_delta_h_by_position.png", "compare_over_steps.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    table = (out / "compare.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["grpo_x"].startswith("| grpo_x | 5 | 0.45 | 0.45 | n/a | n/a | n/a |")
    # last step reward 0.5 + 0.05; mean over the last 20 % of 5 steps = the last step; Δh ratio 0.2 / 0.9
    assert rows["mapo_x"].startswith("| mapo_x | 5 | 0.55 | 0.55 | 0.7 | 0.2222 | [0.9997, 1.0007] |")


def test_compare_needs_two_runs_and_one_mode(tmp_path):
    run = write_run(tmp_path / "one", steps=2, delta_h=[1.0] * 10)
    with pytest.raises(ValueError, match="at least two runs"):
        main(["--compare", str(run), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):
        main([str(run), "--compare", str(run), str(run)])
