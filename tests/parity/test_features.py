"""The release's options as config keys (defaults, validation, effect) and its diagnostics,
plus the failure gate's missing-key error. Expected values are written out in each test."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, compute_policy_loss_vanilla
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig

from mapo_verl.modalities import AUDIO, VISION_FEATURE_KEYS, ablate_audio, key_mask, key_token_ids
from mapo_verl.config import MAPOConfig
from mapo_verl.core import audio_lift
from mapo_verl.core.contract import FAILED_FIELD
from mapo_verl.batch_relevance import folded_advantages, relevance_for_batch, relevance_metrics
from mapo_verl.verl_ext.attention_branch import MassStatistics
from mapo_verl.verl_ext.trainer import _task_failed
from mapo_verl.verl_ext.validation import check_mapo_config
from tests.parity.launch import launch_config

# --- the failure gate ------------------------------------------------------------------


def reward_batch(infos, scores):
    return tu.get_tensordict({"rm_scores": torch.tensor([[0.0, s] for s in scores]),
                              "extra_fields": [{"reward_extra_info": info} for info in infos]})


def test_missing_task_reward_key_is_an_error_naming_key_and_row():
    data = reward_batch([{"acc": 1.0, "format": 1.0}, {"format": 1.0}], [3.0, 1.0])
    with pytest.raises(KeyError, match=r"task_reward_key='acc' is not in the reward_extra_info of response 1 "
                                       r"\(it has \['format'\]\)"):
        _task_failed(data, "acc")


def test_task_reward_key_and_the_explicit_total_score_opt_in():
    data = reward_batch([{"acc": 1.0}, {"acc": 0.0}, {"acc": -1.0}], [3.0, 1.0, 0.0])
    assert _task_failed(data, "acc").tolist() == [False, True, True]
    # "score": the total score (here the wrong-but-formatted answer scores 1 and counts as not failed)
    assert _task_failed(data, "score").tolist() == [False, False, True]


# --- config keys with the release's defaults --------------------------------------------


def test_release_options_have_the_release_defaults():
    config = MAPOConfig()
    assert config.text_only_modality_scope == "audio"
    assert config.attention_only is False
    assert config.attention.include_audio_markers is True
    assert config.pos_gate.empty_fallback is True


@pytest.mark.parametrize("overrides, key", [
    ({"text_only_modality_scope": "video"}, "mapo.text_only_modality_scope"),
    ({"attention_only": "yes"}, "mapo.attention_only"),
    ({"attention_only": True, "attention": {"coef": 0.0}}, "mapo.attention_only"),
    ({"attention": {"include_audio_markers": 1}}, "mapo.attention.include_audio_markers"),
    ({"pos_gate": {"empty_fallback": "no"}}, "mapo.pos_gate.empty_fallback"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MAPOConfig(**overrides)


# --- text_only_modality_scope -------------------------------------------------------------


def sample():
    return {"input_features": torch.ones(1, 4, 6), "feature_attention_mask": torch.ones(1, 6),
            "pixel_values": torch.ones(3, 2), "image_grid_thw": torch.tensor([[1, 1, 3]])}


def test_scope_audio_keeps_images_and_scope_all_drops_every_modality():
    # drop removes the features; masks and grids stay (positions stay aligned)
    assert set(ablate_audio(sample(), "drop", scope="audio")) == {"feature_attention_mask", "pixel_values",
                                                                   "image_grid_thw"}
    assert set(ablate_audio(sample(), "drop", scope="all")) == {"feature_attention_mask", "image_grid_thw"}
    zeroed = ablate_audio(sample(), "zero", scope="all")
    assert set(zeroed) == {"input_features", "feature_attention_mask", "image_grid_thw"}
    assert zeroed["input_features"].sum() == 0
    images_only = {"pixel_values": torch.ones(3, 2)}
    assert set(ablate_audio(images_only, "drop", scope="all")) == {"pixel_values"}  # no audio: untouched
    assert set(VISION_FEATURE_KEYS) == {"pixel_values", "pixel_values_videos"}
    with pytest.raises(ValueError, match="text_only_modality_scope"):
        ablate_audio(sample(), "drop", scope="video")


# --- audio start / end markers ------------------------------------------------------------------


def test_audio_keys_include_the_markers_the_config_names():
    omni = SimpleNamespace(thinker_config=SimpleNamespace(audio_token_id=7, audio_start_token_id=5,
                                                          audio_end_token_id=6))
    assert key_token_ids(omni, [AUDIO]) == (7, 5, 6)
    assert key_token_ids(omni, [AUDIO], include_markers=False) == (7,)
    qwen2_audio = SimpleNamespace(audio_token_index=9)  # no markers in its config
    assert key_token_ids(qwen2_audio, [AUDIO]) == (9,)
    ids = torch.tensor([1, 5, 7, 7, 6, 2])
    assert key_mask(ids, (7, 5, 6)).tolist() == [False, True, True, True, True, False]


# --- attention-only mode -----------------------------------------------------------------------


def test_attention_only_keeps_the_pg_term_at_exactly_zero_weight():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards = torch.zeros(2, 4)
    rewards[0, 2], rewards[1, 3] = 1.0, 0.0
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, index=np.array(["a", "a"], dtype=object))
    relevance = relevance_for_batch(torch.rand(2, 4), torch.rand(2, 4) + 1, mask, torch.ones(2), MAPOConfig())
    advantages = folded_advantages(relevance, grpo, mask, "seq-mean-token-mean", attention_only=True)
    assert advantages.abs().sum() == 0
    assert grpo.abs().sum() > 0  # the attention gate still sees |Â|
    config = FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2)
    log_prob = torch.randn(2, 4, requires_grad=True)
    loss, _ = compute_policy_loss_vanilla(torch.randn(2, 4), log_prob, advantages, mask,
                                          loss_agg_mode="seq-mean-token-mean", config=config)
    loss.backward()
    assert float(loss.detach()) == 0.0 and log_prob.grad.abs().sum() == 0


ATTENTION_ONLY = {"attention_only": True, "pos_gate": {"tagger": "lexicon"}, "attention": {"coef": 0.05}}


@pytest.mark.parametrize("key, value", [("use_kl_loss", True), ("entropy_coeff", 0.01)])
def test_attention_only_refuses_other_loss_terms(key, value):
    check_mapo_config(launch_config(mapo=ATTENTION_ONLY))
    with pytest.raises(ValueError, match=rf"attention_only=true .* actor_rollout_ref\.actor\.{key}"):
        check_mapo_config(launch_config(mapo=ATTENTION_ONLY, **{key: value}))


# --- diagnostics ---------------------------------------------------------------------------------


def test_nu_tilde_statistics_and_mask_clip_frac():
    mask = torch.tensor([[1, 1, 1, 1]])
    gate = torch.tensor([[1, 0, 1, 1]]).bool()
    h_pol = torch.zeros(1, 4)
    h_abl = torch.tensor([[0.0, 5.0, 1.0, 3.0]])
    config = MAPOConfig(mask_cap=1.5)
    relevance = relevance_for_batch(h_pol, h_abl, mask, torch.ones(1), config, pos_gate=gate)
    metrics = relevance_metrics(relevance, config.mask_cap)
    # ν̃ over the three gated tokens: min(3·softmax(−r/τ), 1.5), τ = log 4
    tau = math.log(4)
    exps = [math.exp(-r / tau) for r in (0.0, 1.0, 3.0)]
    nu = [min(3 * e / sum(exps), 1.5) for e in exps]
    assert metrics["mapo/nu_tilde_min"] == pytest.approx(min(nu), rel=1e-6)
    assert metrics["mapo/nu_tilde_max"] == pytest.approx(max(nu), rel=1e-6)
    assert metrics["mapo/nu_tilde_mean"] == pytest.approx(sum(nu) / 3, rel=1e-6)
    # ω̃ = min(4·softmax(r/τ), 1.5) over the four tokens: which reach the cap
    exps = [math.exp(r / tau) for r in (0.0, 5.0, 1.0, 3.0)]
    capped = sum(4 * e / sum(exps) >= 1.5 for e in exps)
    assert metrics["mapo/mask_clip_frac"] == pytest.approx(capped / 4)


def test_audio_lift_is_mass_over_the_uniform_share():
    mass = torch.tensor([[0.5, 0.25, 0.1], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    lift = audio_lift(mass, mask, prompt_lengths=torch.tensor([10, 4]), audio_keys=torch.tensor([5, 2]))
    # row 0: query for response token t sees 10 + t − 1 keys, 5 of them audio
    assert lift[0].tolist() == pytest.approx([0.5 * 10 / 5, 0.25 * 11 / 5, 0.1 * 12 / 5])
    assert lift[1].tolist() == pytest.approx([0.3 * 4 / 2, 0.0, 0.0])
    no_audio = audio_lift(mass, mask, torch.tensor([10, 4]), torch.tensor([0, 0]))
    assert no_audio.abs().sum() == 0


def test_mass_statistics_split_failed_and_successful_responses():
    # row 0: prompt [1, 7, 7, 2] + response of 2; row 1: prompt [7, 3] + response of 3 (7 = audio)
    input_ids = torch.nested.nested_tensor([torch.tensor([1, 7, 7, 2, 8, 9]), torch.tensor([7, 3, 8, 9, 9])],
                                           layout=torch.jagged)
    response_mask = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)
    failed = torch.nested.nested_tensor([torch.ones(2, dtype=torch.long), torch.zeros(3, dtype=torch.long)],
                                        layout=torch.jagged)
    data = {"input_ids": input_ids, "response_mask": response_mask, FAILED_FIELD: failed}
    mass = torch.tensor([[0.4, 0.2, 0.0], [0.6, 0.3, 0.3]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    statistics = MassStatistics()
    statistics.add(mass, valid, data, (7,))
    metrics = statistics.metrics_from(statistics.packed())
    assert metrics["mapo/audio_mass_failed"] == pytest.approx((0.4 + 0.2) / 2)
    assert metrics["mapo/audio_mass_success"] == pytest.approx((0.6 + 0.3 + 0.3) / 3)
    assert metrics["mapo/audio_mass"] == pytest.approx((0.4 + 0.2 + 0.6 + 0.3 + 0.3) / 5)
    # lift: row 0 sees 4 + t − 1 keys (2 audio), row 1 sees 2 + t − 1 keys (1 audio)
    lifts = [0.4 * 4 / 2, 0.2 * 5 / 2, 0.6 * 2 / 1, 0.3 * 3 / 1, 0.3 * 4 / 1]
    assert metrics["mapo/audio_lift"] == pytest.approx(sum(lifts) / 5)
