"""veRL's ``RLHFDataset`` for images on a machine without torchvision (CPU dry runs; docs/DESIGN.md, "Beyond audio").

veRL 0.9.1 collects a prompt's images with ``qwen_vl_utils.process_vision_info``, which imports
torchvision; the CPU build of torch has no matching torchvision wheel on PyPI. This subclass
collects the images itself — the PIL images veRL's ``_build_messages`` already decoded, in RGB,
at their own size (the model's image processor resizes them to its patch grid) — and is used by
the dataset and the agent loop alike (``data.custom_cls``). Videos need torchvision and are refused.
GPU runs keep veRL's own class.
"""

from __future__ import annotations

from typing import Any

from verl.utils.dataset.rl_dataset import RLHFDataset

__all__ = ["PILImageDataset"]


class PILImageDataset(RLHFDataset):
    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size, config) -> tuple[Any, Any, Any]:
        images = []
        for message in messages:
            content = message.get("content")
            for item in content if isinstance(content, list) else ():
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "video":
                    raise ValueError("PILImageDataset (the CPU dry-run dataset) takes images, not videos: video "
                                     "decoding needs torchvision and qwen_vl_utils (veRL's RLHFDataset)")
                if item.get("type") == "image":
                    image = item.get("image")
                    if not hasattr(image, "convert"):
                        raise ValueError(f"an image item holds {type(image).__name__}, not a decoded PIL image: give "
                                         "the dataset's images as PNG/JPEG bytes ({'bytes': ...}) or PIL images")
                    images.append(image.convert("RGB"))
        return images or None, None, cls._extract_audio_info(messages)
