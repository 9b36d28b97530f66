"""A mixed batch of image, audio and text-only rows on the tiny random Qwen2.5-Omni thinker (the real HF class, the
demo's offline processor): removing one modality changes only the rows that carry it, and only after its first
placeholder; each modality's keys are found only in its own rows. Rows run one by one (no padding). A video row on
the same thinker: its ablations change the entropies only after the first frame and keep the 3-D positions."""

import numpy as np
import pytest
import torch
from verl.utils.torch_functional import entropy_from_logits

from mapo_verl.modalities import AUDIO, IMAGE, VIDEO, ablate_modality, has_modality, key_mask, key_token_ids
from tests.trainer.audio_models_testlib import save_tiny_omni, tone_clip

ANSWER = " two beeps, the answer is B"


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    from transformers import AutoConfig
    from verl.utils.model import get_hf_auto_model_class
    from verl.utils.tokenizer import hf_processor

    path = save_tiny_omni(tmp_path_factory.mktemp("omni"))
    model = get_hf_auto_model_class(AutoConfig.from_pretrained(path)).from_pretrained(path).eval()
    with torch.no_grad():  # a peaked LM head: a random model's near-uniform outputs would hide the inputs' effect
        model.lm_head.weight.mul_(50.0)
    return model, hf_processor(str(path))


def rows(processor):
    """(input_ids [1, S], multi_modal_inputs) for an image row, an audio row and a text-only row."""
    image = (np.random.RandomState(0).rand(56, 56, 3) * 255).astype(np.uint8)
    prompts = [("<|vision_bos|><|IMAGE|><|vision_eos|>", {"images": [image]}),
               ("<|audio_bos|><|AUDIO|><|audio_eos|>", {"audio": [tone_clip(1.0, 660.0)], "sampling_rate": 16000}),
               ("", {})]
    out = []
    for media, kwargs in prompts:
        text = f"<|im_start|>user\n{media}How many beeps?<|im_end|>\n<|im_start|>assistant\n{ANSWER}"
        inputs = processor(text=[text], return_tensors="pt", **kwargs)
        out.append((inputs["input_ids"], {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}))
    return out


def entropies(model, ids, inputs):
    with torch.no_grad():
        return entropy_from_logits(model(input_ids=ids, attention_mask=torch.ones_like(ids), **inputs).logits[0])


def test_rows_carry_one_modality_each_and_its_keys(thinker):
    model, processor = thinker
    batch = rows(processor)
    assert [(has_modality(mm, IMAGE), has_modality(mm, AUDIO)) for _, mm in batch] == [(True, False), (False, True),
                                                                                       (False, False)]
    image_keys = [int(key_mask(ids, key_token_ids(model.config, [IMAGE])).sum()) for ids, _ in batch]
    audio_keys = [int(key_mask(ids, key_token_ids(model.config, [AUDIO])).sum()) for ids, _ in batch]
    placeholders = int((batch[0][0] == model.config.image_token_index).sum())
    assert placeholders == 4 and image_keys == [placeholders + 2, 0, 0]  # 2x2 merged patches + the vision markers
    assert audio_keys[0] == 0 and audio_keys[1] > 2 and audio_keys[2] == 0


@pytest.mark.parametrize("kind", [IMAGE, AUDIO], ids=lambda kind: kind.name)
def test_removing_one_modality_changes_only_its_rows_after_its_first_placeholder(thinker, kind):
    model, processor = thinker
    placeholder = model.config.image_token_index if kind is IMAGE else model.config.audio_token_index
    for ids, inputs in rows(processor):
        full = entropies(model, ids, inputs)
        ablated = entropies(model, ids, ablate_modality(inputs, kind, "drop"))
        if not has_modality(inputs, kind):
            assert torch.equal(full, ablated)
            continue
        first = int((ids[0] == placeholder).nonzero()[0])
        assert torch.equal(full[:first], ablated[:first])
        assert (full[first:] - ablated[first:]).abs().max() > 1e-4


def video_row(model, processor, grid=(2, 4, 4)):
    """(input_ids [1, S], multi_modal_inputs) of a prompt with one video: ``grid`` temporal × height × width
    patches of random pixels (the processor's video path needs torchvision, so the inputs are built the way it
    lays them out: one placeholder per merged patch, the grid and the seconds per temporal patch)."""
    vision = model.config.vision_config
    t, h, w = grid
    placeholders = t * h * w // vision.spatial_merge_size**2
    text = (f"<|im_start|>user\n<|vision_bos|>{'<|VIDEO|>' * placeholders}<|vision_eos|>How many beeps?<|im_end|>\n"
            f"<|im_start|>assistant\n{ANSWER}")
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(t * h * w, patch_dim, generator=torch.Generator().manual_seed(0))
    return ids, {"pixel_values_videos": pixels, "video_grid_thw": torch.tensor([list(grid)]),
                 "video_second_per_grid": torch.tensor([1.0])}


def rope_positions(model, ids, inputs):
    positions, _ = model.get_rope_index(ids, None, inputs.get("video_grid_thw"), torch.ones_like(ids),
                                        use_audio_in_video=False, audio_seqlens=None,
                                        second_per_grids=inputs.get("video_second_per_grid"))
    return positions


@pytest.mark.parametrize("mode", ["drop", "zero", "noise"])
def test_video_on_the_thinker_changes_entropies_after_its_first_frame_and_keeps_3d_positions(thinker, mode):
    model, processor = thinker
    ids, inputs = video_row(model, processor)
    placeholders = ids[0] == model.config.video_token_index
    assert has_modality(inputs, VIDEO) and not has_modality(inputs, IMAGE) and int(placeholders.sum()) == 8
    assert int(key_mask(ids, key_token_ids(model.config, [VIDEO])).sum()) == 8 + 2  # + the vision markers
    ablated = ablate_modality(inputs, VIDEO, mode, generator=torch.Generator().manual_seed(1))
    assert ("pixel_values_videos" in ablated) == (mode != "drop")
    full, without = entropies(model, ids, inputs), entropies(model, ids, ablated)
    first = int(placeholders.nonzero()[0])
    assert torch.equal(full[:first], without[:first])
    assert (full[first:] - without[first:]).abs().max() > 1e-4
    positions = rope_positions(model, ids, inputs)
    assert torch.equal(positions, rope_positions(model, ids, ablated))
    frames = positions[0, 0, placeholders]  # temporal index of the two temporal patches: 3-D, not 1-D positions
    assert frames[0] < frames[-1] and len(set(positions[1, 0, placeholders].tolist())) > 1
