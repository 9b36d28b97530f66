"""The ``modalities`` key: validated at config time, and the worker's ablated pass removes exactly the
configured modalities (rows without any of them are flagged out: ω̃ ≡ 1, no attention term).

Expectations are written per row from the inputs (which keys must be gone, which must be untouched).
"""

from __future__ import annotations

import pytest
import torch
from verl.utils import tensordict_utils as tu

from mapo_verl.config import MAPOConfig
from mapo_verl.core.contract import ABLATION_SEED_KEY
from mapo_verl.verl_ext.worker import ablate_batch


def _rows():
    audio = {"input_features": torch.randn(1, 16, 30), "feature_attention_mask": torch.ones(1, 30, dtype=torch.long)}
    image = {"pixel_values": torch.randn(4, 12), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    return [audio, image, {**audio, **image}, None]


def _batch(rows):
    data = tu.get_tensordict({"input_ids": torch.zeros(len(rows), 3, dtype=torch.long)})
    tu.assign_non_tensor_stack(data, "multi_modal_inputs", rows)
    tu.assign_non_tensor(data, **{ABLATION_SEED_KEY: 3})
    return data


@pytest.mark.parametrize("modalities, flags, gone", [
    (["audio"], [1, 0, 1, 0], {"input_features"}),
    (["image"], [0, 1, 1, 0], {"pixel_values"}),
    (["audio", "image"], [1, 1, 1, 0], {"input_features", "pixel_values"}),
])
def test_the_ablated_pass_removes_exactly_the_configured_modalities(modalities, flags, gone):
    rows = _rows()
    data = _batch(rows)
    got = ablate_batch(data, MAPOConfig(modalities=modalities))
    assert got.tolist() == flags
    for before, after in zip(rows, tu.get(data, "multi_modal_inputs")):
        if before is None:
            assert after is None
            continue
        assert set(after) == set(before) - gone  # layout keys (mask, grid) always stay
        for key in after:
            assert torch.equal(after[key], before[key])


def test_default_is_audio_and_visual_modes_need_no_audio():
    assert MAPOConfig().modalities == ["audio"]
    assert MAPOConfig(modalities=["image"], ablation="patch_mask").ablation == "patch_mask"


@pytest.mark.parametrize("kwargs, match", [
    ({"modalities": []}, "modalities"),
    ({"modalities": ["audio", "smell"]}, "modalities"),
    ({"modalities": ["image", "image"]}, "modalities"),
    ({"modalities": "audio"}, "modalities"),
    ({"modalities": ["audio", "image"], "ablation": "patch_mask"}, "ablation"),
])
def test_bad_modalities_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MAPOConfig(**kwargs)


def test_the_engines_key_on_the_configured_modalities():
    """Both engines take their attention keys from ``attention_key_ids`` (the actor config's MAPO section)."""
    from types import SimpleNamespace

    from mapo_verl.demo.data import corpus
    from mapo_verl.demo.model import build_tokenizer, thinker_config
    from mapo_verl.verl_ext.attention_branch import attention_key_ids

    omni = thinker_config(build_tokenizer(corpus()))

    def actor(**mapo):
        return SimpleNamespace(policy_loss=SimpleNamespace(mapo=MAPOConfig(**mapo)))

    audio = (omni.audio_token_index, omni.audio_start_token_id, omni.audio_end_token_id)
    image = (omni.image_token_index, omni.vision_start_token_id, omni.vision_end_token_id)
    assert attention_key_ids(omni, actor()) == audio
    assert attention_key_ids(omni, actor(modalities=["image"])) == image
    assert attention_key_ids(omni, actor(modalities=["audio", "image", "video"])) == audio + image + (
        omni.video_token_index,)
    assert attention_key_ids(omni, actor(modalities=["image"], attention={"include_audio_markers": False})) == (
        omni.image_token_index,)
