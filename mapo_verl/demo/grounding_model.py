"""The grounding benchmark's model: a tiny Qwen2.5-Omni thinker and its batched inputs (docs/RESULTS.md).

- :func:`build_model` writes a random thinker (text hidden 64, 2 layers; audio encoder 2
  layers, ``d_model`` 64) whose offline tokenizer spells the tone names as single tokens and
  whose feature extractor takes clips up to :data:`~mapo_verl.demo.grounding.CLIP_SECONDS`.
- :func:`encode` runs the processor once per example (features are precomputed: running the
  processor per batch costs more than a training step) and :func:`collate` pads a batch:
  right padding for teacher forcing, left padding for generation.
- :func:`load_actor_checkpoint` loads the actor weights a veRL run saved into the HF model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mapo_verl.demo.grounding import CLIP_SECONDS, QUESTION, Example, corpus

__all__ = ["Encoded", "build_model", "collate", "encode", "greedy_decode", "load_actor_checkpoint", "load_model",
           "prompt_text"]


def build_model(path: str | Path, seed: int = 0) -> Path:
    """A random grounding thinker with its processor under ``path``."""
    from mapo_verl.demo.model import save_tiny_omni_thinker

    return save_tiny_omni_thinker(path, corpus(), seed=seed, clip_seconds=CLIP_SECONDS, audio_layers=2, audio_width=64)


def load_model(path: str | Path, attn_implementation: str = "sdpa"):
    """``(model, processor)`` from an HF directory (``eager`` attention returns attention weights)."""
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from mapo_verl.patches.processors import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation=attn_implementation)
    return model, processor


def load_actor_checkpoint(model, checkpoint_dir: str | Path) -> None:
    """Load ``model_world_size_1_rank_0.pt`` of a veRL actor checkpoint (FSDP2, one rank) into ``model``."""
    path = Path(checkpoint_dir) / "model_world_size_1_rank_0.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no single-rank actor checkpoint at {path} (was trainer.save_freq set?)")
    state = torch.load(path, weights_only=False, map_location="cpu")
    state = {name: (t.full_tensor() if hasattr(t, "full_tensor") else t) for name, t in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")


def prompt_text(processor) -> str:
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": QUESTION}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@dataclass
class Encoded:
    prompt_ids: torch.Tensor  # [P], audio placeholders expanded
    answer_ids: torch.Tensor  # [A], the answer's tokens and end-of-turn
    features: torch.Tensor  # [128, frames] valid frames only
    labels: tuple[int, ...]


def encode(processor, examples: list[Example], clips: list | None = None) -> list[Encoded]:
    """Processor outputs per example; ``clips`` replaces the audio (perturbations) but keeps the labels."""
    tokenizer = processor.tokenizer
    text = prompt_text(processor)
    out = []
    for index, example in enumerate(examples):
        clip = example.clip if clips is None else clips[index]
        inputs = processor(text=[text], audio=[clip], return_tensors="pt")
        frames = int(inputs["feature_attention_mask"][0].sum())
        answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        features = inputs["input_features"][0, :, :frames].clone()
        out.append(Encoded(inputs["input_ids"][0], torch.tensor(answer), features, example.labels))
    return out


def collate(batch: list[Encoded], pad_id: int, teacher_forcing: bool, audio: bool = True) -> dict:
    """Model inputs for ``batch``: prompt + answer right-padded with ``labels`` on the answer
    (``teacher_forcing``), or prompts left-padded for generation. ``audio=False`` drops the
    audio features and keeps the placeholders (the ablated input of docs/DESIGN.md)."""
    rows = [torch.cat([e.prompt_ids, e.answer_ids]) if teacher_forcing else e.prompt_ids for e in batch]
    width = max(len(r) for r in rows)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, e) in enumerate(zip(rows, batch)):
        span = slice(0, len(row)) if teacher_forcing else slice(width - len(row), width)
        ids[i, span], mask[i, span] = row, 1
        if teacher_forcing:
            labels[i, len(e.prompt_ids):len(row)] = e.answer_ids
    inputs = {"input_ids": ids, "attention_mask": mask}
    if teacher_forcing:
        inputs["labels"] = labels
    if audio:
        frames = max(e.features.shape[1] for e in batch)
        features = torch.zeros(len(batch), batch[0].features.shape[0], frames)
        feature_mask = torch.zeros(len(batch), frames, dtype=torch.long)
        for i, e in enumerate(batch):
            features[i, :, :e.features.shape[1]] = e.features
            feature_mask[i, :e.features.shape[1]] = 1
        inputs.update(input_features=features, feature_attention_mask=feature_mask)
    return inputs


@torch.no_grad()
def greedy_decode(model, processor, batch: list[Encoded], max_new_tokens: int) -> list[list[int]]:
    """Greedy responses (token ids, end-of-turn excluded) for ``batch``."""
    tokenizer = processor.tokenizer
    inputs = collate(batch, tokenizer.pad_token_id, teacher_forcing=False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            suppress_tokens=[model.config.audio_token_index])
    responses = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        end = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
        responses.append([t for t in row[:end] if t != tokenizer.pad_token_id])
    return responses
