"""Metrics and the collapse report name the modality: ``mapo/<modality>_*`` (``mapo/image_mass``,
``mapo/audio+image_lift``); an audio-only run keeps exactly today's ``mapo/audio_*`` names and values.

Expected names are written out here, not built with the code under test.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mapo_verl.batch_relevance import BatchRelevance, relevance_metrics
from mapo_verl.config import MAPOConfig
from mapo_verl.core.contract import FAILED_FIELD
from mapo_verl.modalities import metric_label
from mapo_verl.report.collapse import main as report_main
from mapo_verl.report.collapse import modality_of
from mapo_verl.verl_ext.attention_branch import AttentionBranch, MassStatistics

AUDIO_MASS_NAMES = {"mapo/audio_mass", "mapo/audio_lift", "mapo/audio_mass_failed", "mapo/audio_mass_success",
                    "mapo/audio_mass/late_early_ratio", *(f"mapo/audio_mass/decile_{k}" for k in range(10))}


@pytest.mark.parametrize("names, label", [
    (["audio"], "audio"), (["image"], "image"), (["video"], "video"),
    (["image", "audio"], "audio+image"), (["video", "image"], "image+video"),
])
def test_metric_label_is_the_modalities_in_a_fixed_order(names, label):
    assert metric_label(names) == label


@pytest.mark.parametrize("names", [[], ["smell"], ["audio", "smell"]])
def test_metric_label_refuses_unknown_or_no_modality(names):
    with pytest.raises(ValueError, match="modalities"):
        metric_label(names)


def _jagged(*rows, dtype=torch.float32):
    return torch.nested.nested_tensor([torch.tensor(row, dtype=dtype) for row in rows], layout=torch.jagged)


def _statistics(label: str | None) -> MassStatistics:
    """Two rows of response-aligned mass (responses of 2 and 3 tokens after the prompt); row 0 failed."""
    data = {"input_ids": _jagged([7, 7, 1, 2, 3, 4], [7, 1, 5, 6, 8], dtype=torch.long),
            "response_mask": _jagged([1, 1], [1, 1, 1]),
            FAILED_FIELD: _jagged([1, 1], [0, 0, 0], dtype=torch.long)}
    statistics = MassStatistics() if label is None else MassStatistics(label)
    statistics.add(torch.tensor([[0.4, 0.2, 0.0], [0.6, 0.3, 0.3]]),
                   torch.tensor([[True, True, False], [True, True, True]]), data, (7,))
    return statistics


def test_audio_mass_metrics_keep_their_names_and_other_labels_rename_only():
    default = _statistics(None)
    audio = default.metrics_from(default.packed())
    # short responses fill only some deciles: every name is one of today's, and the scalars are all there
    assert set(audio) <= AUDIO_MASS_NAMES
    assert {"mapo/audio_mass", "mapo/audio_lift", "mapo/audio_mass_failed", "mapo/audio_mass_success",
            "mapo/audio_mass/decile_0"} <= set(audio)
    assert audio["mapo/audio_mass"] == pytest.approx((0.4 + 0.2 + 0.6 + 0.3 + 0.3) / 5)
    for label in ("image", "audio+image"):
        statistics = _statistics(label)
        renamed = statistics.metrics_from(statistics.packed())
        assert renamed == {key.replace("mapo/audio_", f"mapo/{label}_"): value for key, value in audio.items()}


def test_attention_branch_labels_its_statistics_with_the_configured_modalities():
    def branch(modalities):
        mapo = MAPOConfig(modalities=modalities)
        actor_config = SimpleNamespace(policy_loss=SimpleNamespace(mapo=mapo), loss_agg_mode="token-mean")
        return AttentionBranch(mapo.attention, actor_config, (7,), num_sequences=1.0, num_tokens=1.0)

    assert branch(["audio"]).statistics.label == "audio"
    assert branch(["image"]).statistics.label == "image"
    assert branch(["video", "audio"]).statistics.label == "audio+video"


def test_relevance_metrics_name_the_sample_share_by_modality():
    relevance = BatchRelevance(omega=torch.ones(2, 3), nu=torch.ones(2, 3), delta_h=torch.zeros(2, 3),
                               response_mask=torch.ones(2, 3, dtype=torch.bool),
                               has_audio=torch.tensor([True, False]), pos_gate=None)
    audio = relevance_metrics(relevance, cap=5.0)
    image = relevance_metrics(relevance, cap=5.0, label="image")
    assert audio["mapo/audio_sample_frac"] == 0.5 and "mapo/image_sample_frac" not in audio
    assert image["mapo/image_sample_frac"] == 0.5 and "mapo/audio_sample_frac" not in image
    assert {k: v for k, v in audio.items() if "sample_frac" not in k} == \
           {k: v for k, v in image.items() if "sample_frac" not in k}


def _write_run(path, modality: str | None):
    path.mkdir(parents=True)
    with (path / "metrics.jsonl").open("w") as handle:
        for step in (1, 2, 3):
            data = {"critic/score/mean": 0.1 * step}
            if modality:
                data.update({f"mapo/{modality}_mass/decile_{k}": 0.9 - 0.05 * k for k in range(10)})
                data.update({f"mapo/{modality}_mass": 0.7, f"mapo/{modality}_mass/late_early_ratio": 0.6})
            handle.write(json.dumps({"step": step, "data": data}) + "\n")
    return path


def test_modality_of_reads_the_logged_mass_metric():
    assert modality_of({1: {"mapo/image_mass/decile_0": 0.5}}) == "image"
    assert modality_of({1: {"critic/score/mean": 0.0}}, {1: {"mapo/audio+image_mass": 0.5}}) == "audio+image"
    assert modality_of({1: {"critic/score/mean": 0.0}}) == "audio"  # a GRPO run: nothing to read


def test_collapse_report_names_the_image_modality(tmp_path):
    run = _write_run(tmp_path / "mapo_vl", "image")
    out = tmp_path / "report"
    assert report_main([str(run / "metrics.jsonl"), "--out", str(out)]) == 0
    assert (out / "image_mass_by_position.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "audio_mass_by_position.png").exists()
    summary = (out / "summary.md").read_text()
    assert "| `mapo/image_mass/late_early_ratio` | 0.6 |" in summary
    assert "image attention mass falls along the response" in summary

    compare = tmp_path / "compare"
    assert report_main(["--compare", str(_write_run(tmp_path / "grpo_vl", None)), str(run),
                        "--out", str(compare)]) == 0
    assert (compare / "compare_image_mass_by_position.png").is_file()
    assert "image mass late/early" in (compare / "compare.md").read_text()
