"""Image ablations on a tiny random Qwen2.5-VL, and the modality descriptors on a mixed image / audio / text batch.

Entropies are computed as veRL's engine does (``entropy_from_logits``); references are written out
independently (black = (0 − mean) / std of the CLIP normalisation, row-by-row expectations).
"""

import pytest
import torch
from verl.utils.torch_functional import entropy_from_logits

from mapo_verl.modalities import (
    AUDIO,
    IMAGE,
    VIDEO,
    VISUAL_ABLATION_MODES,
    ablate_audio,
    ablate_modality,
    blacken_patches,
    has_modality,
    key_token_ids,
    mismatch_images,
    modality,
    placeholder_token_id,
)
from tests.vision.vl_testlib import (
    IMAGE_ID,
    PATCH_DIM,
    VIDEO_ID,
    VISION_END_ID,
    VISION_START_ID,
    image_sample,
    tiny_qwen2_5_vl,
    video_sample,
)

RESPONSE = 8


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2_5_vl("eager")


def entropies(model, ids, inputs):
    with torch.no_grad():
        logits = model(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long), **inputs).logits
    return entropy_from_logits(logits[0])


@pytest.mark.parametrize("mode", VISUAL_ABLATION_MODES)
def test_ablated_entropies_identical_before_the_first_image_token_and_different_after(model, mode):
    ids, inputs = image_sample()
    ablated = ablate_modality(inputs, IMAGE, mode, generator=torch.Generator().manual_seed(0), patch_ratio=0.5)
    assert torch.equal(ablated["image_grid_thw"], inputs["image_grid_thw"])  # the grid stays: positions stay
    full, without = entropies(model, ids, inputs), entropies(model, ids, ablated)
    first_image = int((ids == IMAGE_ID).nonzero()[0])
    assert torch.equal(full[:first_image], without[:first_image])
    assert (full[-RESPONSE:] - without[-RESPONSE:]).abs().max() > 1e-6


def test_rope_positions_stay_aligned(model):
    """The ablated pass keeps the grid and token types, so the model builds the same 3-D positions."""
    ids, inputs = image_sample()
    ablated = ablate_modality(inputs, IMAGE, "drop")
    assert "pixel_values" not in ablated
    mask = torch.ones(1, len(ids), dtype=torch.long)
    full, kept = (model.model.get_rope_index(ids[None], sample["mm_token_type_ids"], sample["image_grid_thw"],
                                             attention_mask=mask)[0] for sample in (inputs, ablated))
    assert torch.equal(full, kept)
    # 3-D positions: the image's height / width rows differ from its temporal row (not plain 1-D positions)
    image = ids == IMAGE_ID
    assert not torch.equal(full[0, 0, image], full[1, 0, image]) or not torch.equal(full[0, 0, image], full[2, 0, image])


@pytest.mark.parametrize("mode", ("drop", "zero", "noise"))
def test_video_ablation_changes_entropies_only_after_the_first_frame_and_keeps_positions(model, mode):
    ids, inputs = video_sample()
    ablated = ablate_modality(inputs, VIDEO, mode, generator=torch.Generator().manual_seed(0))
    assert ("pixel_values_videos" in ablated) == (mode != "drop")
    for key in ("video_grid_thw", "second_per_grid_ts", "mm_token_type_ids"):  # layout kept: positions kept
        assert torch.equal(ablated[key], inputs[key])
    full, without = entropies(model, ids, inputs), entropies(model, ids, ablated)
    first_frame = int((ids == VIDEO_ID).nonzero()[0])
    assert torch.equal(full[:first_frame], without[:first_frame])
    assert (full[-RESPONSE:] - without[-RESPONSE:]).abs().max() > 1e-6
    mask = torch.ones(1, len(ids), dtype=torch.long)
    positions = [model.model.get_rope_index(ids[None], sample["mm_token_type_ids"], None, sample["video_grid_thw"],
                                            second_per_grid_ts=sample["second_per_grid_ts"], attention_mask=mask)[0]
                 for sample in (inputs, ablated)]
    assert torch.equal(*positions)
    frames = positions[0][0, 0, ids == VIDEO_ID]
    assert frames.unique().numel() == 2  # two temporal patches: the video's own time axis, not 1-D positions


def test_patch_blackening_sets_chosen_patches_to_normalised_black():
    features = torch.randn(16, PATCH_DIM, dtype=torch.float64)
    out = blacken_patches(features, 0.5, generator=torch.Generator().manual_seed(1), group=4)
    changed = [row for row in range(16) if not torch.equal(out[row], features[row])]
    assert len(changed) == 8 and all(row // 4 in {c // 4 for c in changed} for row in changed)
    assert {tuple(changed[i:i + 4]) for i in range(0, 8, 4)} <= {tuple(range(g * 4, g * 4 + 4)) for g in range(4)}
    per_channel = PATCH_DIM // 3
    black = [(0 - 0.48145466) / 0.26862954, (0 - 0.4578275) / 0.26130258, (0 - 0.40821073) / 0.27577711]
    for row in changed:
        for channel in range(3):
            values = out[row, channel * per_channel:(channel + 1) * per_channel]
            assert torch.allclose(values, torch.full_like(values, black[channel]), rtol=0, atol=1e-12)
    assert torch.equal(blacken_patches(features, 0.0), features)
    assert not torch.equal(blacken_patches(features, 1.0)[0], features[0])


@pytest.mark.parametrize("kwargs, match", [({"ratio": 1.5}, "ratio"), ({"ratio": 0.5, "group": 3}, "groups of 3")])
def test_patch_blackening_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        blacken_patches(torch.zeros(16, PATCH_DIM), **kwargs)
    with pytest.raises(ValueError, match="num_patches"):
        blacken_patches(torch.zeros(16, 7), 0.5)


def test_mismatched_image_comes_from_another_image_with_the_same_grid():
    _, a = image_sample(seed=1)
    _, b = image_sample(seed=2)
    samples = [a, dict(a), b, None, {"input_features": torch.ones(1, 4, 6)}]
    out = mismatch_images(samples, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[0]["pixel_values"], b["pixel_values"]) and torch.equal(out[1]["pixel_values"],
                                                                                  b["pixel_values"])
    assert torch.equal(out[2]["pixel_values"], a["pixel_values"])  # a differs from b: either copy of a
    assert out[3] is None and out[4] == samples[4]
    assert torch.equal(out[0]["image_grid_thw"], a["image_grid_thw"])


def test_mismatch_without_a_partner_names_the_row():
    _, a = image_sample(seed=1)
    _, wide = image_sample(grid=(1, 4, 8), seed=2)
    _, b = image_sample(seed=3)
    with pytest.raises(ValueError, match="row 1: no other sample in the batch has image features with the same "
                                         "image_grid_thw"):
        mismatch_images([a, wide, b])
    with pytest.raises(ValueError, match="row 0"):  # copies of one image (one prompt's responses) are no partner
        mismatch_images([a, dict(a)])


# --- a mixed batch: image, audio and text-only rows --------------------------------------------


def mixed_batch():
    _, image = image_sample(seed=3)
    audio = {"input_features": torch.randn(1, 16, 30, generator=torch.Generator().manual_seed(4)),
             "feature_attention_mask": torch.ones(1, 30, dtype=torch.long)}
    return [image, audio, None, {}]


def test_each_row_is_told_apart_by_modality():
    rows = mixed_batch()
    assert [has_modality(row, IMAGE) for row in rows] == [True, False, False, False]
    assert [has_modality(row, AUDIO) for row in rows] == [False, True, False, False]
    assert not any(has_modality(row, VIDEO) for row in rows)


@pytest.mark.parametrize("mode", ["drop", "zero", "noise"])
def test_image_ablation_leaves_audio_and_text_rows_alone(mode):
    rows = mixed_batch()
    out = [ablate_modality(row, IMAGE, mode, generator=torch.Generator().manual_seed(0)) for row in rows]
    assert out[1] == rows[1] and out[1]["input_features"] is rows[1]["input_features"]
    assert out[2] is None and out[3] == {}
    assert ("pixel_values" in out[0]) == (mode != "drop")


def test_audio_ablation_keeps_its_layout_and_other_modalities_unless_scope_all():
    row = {"input_features": torch.randn(2, 16, 30), "feature_attention_mask": torch.ones(2, 30, dtype=torch.long),
           "pixel_values": torch.randn(4, PATCH_DIM), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    dropped = ablate_modality(row, AUDIO, "drop")
    assert set(dropped) == {"feature_attention_mask", "pixel_values", "image_grid_thw"}
    assert torch.equal(dropped["pixel_values"], row["pixel_values"])
    zeroed = ablate_modality(row, AUDIO, "zero")
    assert torch.equal(zeroed["input_features"], torch.zeros(2, 16, 30))
    noisy = ablate_modality(row, AUDIO, "noise", noise_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert float(noisy["input_features"].std()) == pytest.approx(2.0 * float(row["input_features"].std()), rel=0.1)
    every = ablate_audio(row, "drop", scope="all")
    assert set(every) == {"feature_attention_mask", "image_grid_thw"}
    assert ablate_audio({"pixel_values": row["pixel_values"]}, "drop", scope="all").keys() == {"pixel_values"}
    with pytest.raises(ValueError, match="patch_mask"):
        ablate_modality({"pixel_values": torch.ones(4, 3)}, IMAGE, "silence")
    with pytest.raises(ValueError, match=r"audio ablation mode must be one of \['drop', 'zero', 'noise'\]"):
        ablate_modality(row, AUDIO, "patch_mask")


def test_key_token_ids_per_modality():
    from mapo_verl.demo.data import corpus
    from mapo_verl.demo.model import build_tokenizer, thinker_config

    config = thinker_config(build_tokenizer(corpus()))  # the Omni thinker: audio and vision ids
    audio = (config.audio_token_index, config.audio_start_token_id, config.audio_end_token_id)
    assert key_token_ids(config, [AUDIO]) == audio
    assert key_token_ids(config, [AUDIO], include_markers=False) == audio[:1]
    image = key_token_ids(config, [IMAGE])
    assert image == (config.image_token_index, config.vision_start_token_id, config.vision_end_token_id)
    both = key_token_ids(config, [IMAGE, VIDEO])
    assert both == image + (config.video_token_index,)  # shared vision markers counted once
    vl = tiny_qwen2_5_vl().config
    assert placeholder_token_id(vl, IMAGE) == IMAGE_ID
    assert key_token_ids(vl, [IMAGE]) == (IMAGE_ID, VISION_START_ID, VISION_END_ID)
    with pytest.raises(ValueError, match="no audio_token_id / audio_token_index"):
        placeholder_token_id(vl, AUDIO)
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        modality("smell")
