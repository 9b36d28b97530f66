"""A mixed batch of image, audio and text-only rows on the tiny random Qwen2.5-Omni thinker (the real HF class, the
demo's offline processor): removing one modality changes only the rows that carry it, and only after its first
placeholder; each modality's keys are found only in its own rows. Rows run one by one (no padding)."""

import numpy as np
import pytest
import torch
from verl.utils.torch_functional import entropy_from_logits

from mapo_verl.modalities import AUDIO, IMAGE, ablate_modality, has_modality, key_mask, key_token_ids
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
