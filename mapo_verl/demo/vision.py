"""The embedded vision default: a tiny random Qwen2.5-VL and a generated shapes set (docs/DESIGN.md, "Beyond audio").

Built offline like the audio demo (:mod:`mapo_verl.demo.model`, :mod:`mapo_verl.demo.data`): the demo's
byte-level BPE tokenizer with Qwen2.5-VL's vision tokens, a ``Qwen2_5_VLProcessor`` (PIL image processor)
and a randomly initialised ``Qwen2_5_VLForConditionalGeneration`` — transformers' real class, the one
veRL supports natively. The set: 84×84 images of 1-4 coloured squares on a dark background, with two
questions a rule reward checks (:mod:`mapo_verl.demo.reward`):

- ``count``: "How many squares are in the image? ..." → ``"3"``;
- ``red``: "Is there a red square in the image? ..." → ``"yes"`` / ``"no"``.

Rows follow veRL's ``RLHFDataset`` layout with an ``<image>`` placeholder and ``images`` as PNG bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mapo_verl.demo.data import question_rows
from mapo_verl.demo.model import build_tokenizer, save_model_files

__all__ = ["VISION_SPECIAL_TOKENS", "VL_CHAT_TEMPLATE", "IMAGE_SIDE", "DATA_SOURCE", "QUESTIONS", "vl_corpus",
           "make_image", "make_rows", "save_tiny_qwen2_5_vl"]

VISION_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
# ChatML, with an image item rendered the way Qwen2.5-VL's template renders it.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_SIDE = 84  # pixels: 6×6 patches of 14, 9 image tokens after the 2×2 merge
DATA_SOURCE = "mapo_demo_shapes"
QUESTIONS = {
    "count": "How many squares are in the image? Answer with one number.",
    "red": "Is there a red square in the image? Answer yes or no.",
}
_RED = (220, 30, 30)
_OTHER_COLOURS = ((30, 200, 60), (40, 80, 230), (230, 210, 40), (200, 60, 220))
_SQUARE = 16  # side in pixels; four fit on the 2×2 grid of cells without touching


def vl_corpus() -> list[str]:
    """Text the vision demo's tokenizer is trained on."""
    words = ["system", "user", "assistant", "yes", "no", "The answer is", "I see", "squares", "red", "image"]
    return [*QUESTIONS.values(), *words, " ".join(str(n) for n in range(10))] * 4


def make_image(task: str, answer: str, rng: np.random.Generator) -> bytes:
    """PNG bytes of one image whose correct answer to ``QUESTIONS[task]`` is ``answer``."""
    from PIL import Image

    if task == "count":
        count, red = int(answer), None
    elif task == "red":
        count, red = int(rng.integers(1, 5)), answer == "yes"
    else:
        raise ValueError(f"unknown task {task!r}; known: {sorted(QUESTIONS)}")
    colours = [_OTHER_COLOURS[int(i)] for i in rng.integers(0, len(_OTHER_COLOURS), size=count)]
    if red or (red is None and rng.random() < 0.5):
        colours[int(rng.integers(0, count))] = _RED
    pixels = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), 20, dtype=np.uint8)
    cell = IMAGE_SIDE // 2
    for colour, slot in zip(colours, rng.permutation(4)[:count]):
        top = (slot // 2) * cell + int(rng.integers(2, cell - _SQUARE - 2))
        left = (slot % 2) * cell + int(rng.integers(2, cell - _SQUARE - 2))
        pixels[top:top + _SQUARE, left:left + _SQUARE] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_rows(num_rows: int, seed: int, split: str) -> list[dict]:
    """``num_rows`` image examples alternating between the two tasks, reproducible from ``seed``."""
    return question_rows(num_rows, seed, split, tasks=("count", "red"), questions=QUESTIONS, data_source=DATA_SOURCE,
                         placeholder="<image>", media_key="images", ability="vision",
                         make_media=lambda task, answer, rng: {"bytes": make_image(task, answer, rng)})


def vl_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_processing_utils import BaseVideoProcessor

    from mapo_verl.patches.processors import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112),
        # no video in the demo; the generic processor loads where torchvision is missing
        video_processor=BaseVideoProcessor(merge_size=2, patch_size=14, temporal_patch_size=2),
        tokenizer=tokenizer,
        chat_template=VL_CHAT_TEMPLATE,
    )


def vl_config(tokenizer):
    """The demo model's config: text hidden 64, 2 layers, 4 query / 2 KV heads, 3-D mRoPE; a one-block
    vision tower (patch 14, 2×2 merge)."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in VISION_SPECIAL_TOKENS.items()}
    return Qwen2_5_VLConfig(
        text_config={
            # padded to a multiple of 64 as released checkpoints pad theirs: tensor parallelism splits the vocabulary
            "vocab_size": -(-len(tokenizer) // 64) * 64,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024,
            # temporal/height/width sections sum to head_dim / 2
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "tie_word_embeddings": False, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                       "fullatt_block_indexes": [0], "in_channels": 3},
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def save_tiny_qwen2_5_vl(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny random Qwen2.5-VL with its tokenizer and processor to ``path``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tokenizer(vl_corpus(), special_tokens=VISION_SPECIAL_TOKENS, chat_template=VL_CHAT_TEMPLATE)
    return save_model_files(path, tokenizer, vl_processor(tokenizer), seed,
                             lambda: Qwen2_5_VLForConditionalGeneration(vl_config(tokenizer)))
