"""The pieces that let a vision-language model run through veRL on CPU, one by one:

- ``patches/processors``: veRL's ``hf_processor`` loads its own Qwen2.5-VL processor where torchvision is
  missing (veRL alone returns ``None`` there, and the run would train without images);
- ``patches/vl_text_rows``: veRL's Qwen2-VL embedding step for an image-free micro-batch (MAPO's ablated
  pass) gives the token embeddings exactly and keeps the vision tower in the backward graph; micro-batches
  with pixels go to veRL's function unchanged;
- ``mapo_verl.cpu.vision_dataset.PILImageDataset``: images collected without torchvision; video and
  undecoded images refused with a message;
- the hf rollout's image inputs: grids from the processor, a placeholder-count mismatch names the request.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mapo_verl.cpu.rollout import HFRolloutServer
from mapo_verl.cpu.vision_dataset import PILImageDataset
from mapo_verl.demo.vision import IMAGE_SIDE, save_tiny_qwen2_5_vl
from tests.vision.vl_testlib import image_sample, tiny_qwen2_5_vl


@pytest.fixture(scope="module")
def vl_dir(tmp_path_factory):
    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("vl") / "qwen2_5_vl_tiny")


def _no_torchvision():
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: veRL loads the processor by itself")


def test_verl_loads_its_vl_processor_without_torchvision_only_with_the_patch(vl_dir, monkeypatch):
    import sys

    import transformers
    from transformers import processing_utils
    from verl.utils.tokenizer import tokenizer as verl_tokenizer

    from mapo_verl.patches import apply_audio_model_patches

    _no_torchvision()
    apply_audio_model_patches()
    patched = verl_tokenizer.hf_processor
    original = patched.__mapo_original__
    # veRL alone: put transformers' torchvision placeholder back, as in a fresh process
    placeholder = transformers.utils.dummy_torchvision_objects.BaseVideoProcessor
    for module in (processing_utils.transformers_module, sys.modules["transformers"]):
        monkeypatch.setattr(module, "BaseVideoProcessor", placeholder)
    assert original(str(vl_dir)) is None
    processor = patched(str(vl_dir))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert callable(processor.get_rope_index)  # veRL binds Qwen2.5-VL's 3-D mRoPE index


def test_image_free_micro_batch_embeds_the_tokens_and_keeps_the_vision_tower_in_the_graph():
    from verl.models.transformers import qwen2_vl as verl_qwen2_vl

    from mapo_verl.patches import apply_audio_model_patches

    apply_audio_model_patches()
    model = tiny_qwen2_5_vl().model
    ids, inputs = image_sample()
    ids = ids[None]
    mask = torch.ones_like(ids)
    patched = verl_qwen2_vl._get_input_embeds
    assert patched.__mapo_original__ is not patched
    with pytest.raises(AttributeError):  # veRL 0.9.1's own function under transformers 5
        patched.__mapo_original__(model, ids, mask, None, None, None, None)

    embeds, out_mask = patched(model, ids, mask, None, None, None, None)
    assert torch.equal(embeds, model.get_input_embeddings()(ids)) and torch.equal(out_mask, mask)
    embeds.sum().backward()
    vision_grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None for g in vision_grads)  # FSDP needs every parameter in the backward pass
    assert all(float(g.abs().max()) == 0.0 for g in vision_grads)  # ... with no effect on the update

    model.zero_grad()
    with_pixels = patched(model, ids, mask, inputs["pixel_values"], None, inputs["image_grid_thw"], None)
    direct = patched.__mapo_original__(model, ids, mask, inputs["pixel_values"], None, inputs["image_grid_thw"], None)
    assert torch.equal(with_pixels[0], direct[0])
    assert not torch.equal(with_pixels[0], embeds)  # the image placeholders now hold image features


def _image(colour=(200, 10, 10)):
    return Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), colour)


def test_pil_dataset_collects_images_in_rgb_and_keeps_audio():
    grey = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 128)
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "image", "image": grey},
                                             {"type": "audio", "audio": [0.0, 0.1]},
                                             {"type": "text", "text": "How many?"}]}]
    images, videos, audios = PILImageDataset._process_multi_modal_info(messages, 14, {})
    assert [image.mode for image in images] == ["RGB", "RGB"] and images[1].getpixel((0, 0)) == (128, 128, 128)
    assert videos is None and audios == [[0.0, 0.1]]
    text_only = [{"role": "user", "content": "no media"}]
    assert PILImageDataset._process_multi_modal_info(text_only, 14, {}) == (None, None, None)


@pytest.mark.parametrize("item, match", [
    ({"type": "video", "video": ["frame.png"]}, "videos"),
    ({"type": "image", "image": "/data/cat.png"}, "not a decoded PIL image"),
])
def test_pil_dataset_refuses_video_and_undecoded_images(item, match):
    with pytest.raises(ValueError, match=match):
        PILImageDataset._process_multi_modal_info([{"role": "user", "content": [item]}], 14, {})


def test_rollout_image_inputs_match_the_placeholders_or_name_the_request(vl_dir):
    from transformers import AutoConfig, AutoProcessor

    from mapo_verl.patches.processors import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    processor = AutoProcessor.from_pretrained(str(vl_dir))
    config = AutoConfig.from_pretrained(str(vl_dir))
    from transformers import Qwen2_5_VLForConditionalGeneration

    generator = SimpleNamespace(config=config, forward=Qwen2_5_VLForConditionalGeneration.forward)
    server = SimpleNamespace(processor=processor, generator=generator,
                             model_config=SimpleNamespace(hf_config=config))
    tokens = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}],
        add_generation_prompt=True, tokenize=False)
    prompt_ids = processor(text=[tokens], images=[_image()], return_tensors="pt")["input_ids"][0].tolist()
    inputs = HFRolloutServer._image_inputs(server, prompt_ids, [_image()], "req-7")
    side = IMAGE_SIDE // 14
    assert inputs["image_grid_thw"].tolist() == [[1, side, side]]
    assert inputs["pixel_values"].shape[0] == side * side
    assert int(inputs["mm_token_type_ids"].sum()) == prompt_ids.count(config.image_token_id) == side * side // 4
    # a model whose forward takes no token types (the Omni thinkers) gets none
    server.generator.forward = lambda input_ids, pixel_values=None, image_grid_thw=None: None
    assert "mm_token_type_ids" not in HFRolloutServer._image_inputs(server, prompt_ids, [_image()], "req-9")
    with pytest.raises(ValueError, match=r"request req-8: the prompt holds 9 image placeholders, its 2 image\(s\) "
                                         r"need 18"):
        HFRolloutServer._image_inputs(server, prompt_ids, [_image(), _image((0, 0, 255))], "req-8")
