"""MAPO's Ray worker: veRL's ActorRolloutRefWorker plus the audio-ablated pass.

- :meth:`compute_ablated_entropy_ref` / :meth:`compute_ablated_entropy_actor`: one
  no-grad forward of the reference (or the current policy, or the LoRA base) over the
  batch with the audio removed (:func:`mapo_verl.ablation.ablate_audio`), returning the
  entropies at the rollout temperature. It reuses the worker's existing engine, its
  micro-batching and dynamic batch sizes: no extra model copy.
- :meth:`compute_ablated_entropy_text_ref`: the same pass on the external text reference
  (``text_ref_model``), a frozen engine the actor worker builds beside its own
  (:mod:`mapo_verl.verl_ext.text_reference`).
- the actor's and the reference's engines are MAPO's where one is registered for the
  backend (veRL's ``EngineRegistry`` under the vendor key :data:`MAPO_ENGINE_VENDOR`):
  they carry the audio features into the forward (veRL's Megatron engine passes only
  image/video keys) and, for the actor's update, the attention-loss hooks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from mapo_verl.config import MAPOConfig, mapo_config_from
from mapo_verl.core.contract import (
    ABLATED_ENTROPY_FIELD,
    ABLATION_SEED_KEY,
    CONFIG_PREFIX,
    HAS_AUDIO_FIELD,
    MAPO_ENGINE_VENDOR,
)
from mapo_verl.modalities import AUDIO, ablate_audio, ablate_modality, has_modality, modality
from mapo_verl.verl_ext.text_reference import TEXT_REF_MESH, build_text_reference

__all__ = [
    "MAPOTrainingWorker",
    "MAPOActorRolloutRefWorker",
    "ablate_batch",
]



@contextmanager
def _engine_vendor(vendor: str) -> Iterator[None]:
    """Select engines registered under ``vendor`` for the constructions inside the block.

    veRL's ``EngineRegistry`` reads ``VERL_ENGINE_VENDOR`` at construction time; a backend
    without an engine for this vendor falls back to veRL's own. Worker construction is
    single-threaded, so the scoped override is not observed elsewhere.
    """
    previous = os.environ.get("VERL_ENGINE_VENDOR")
    os.environ["VERL_ENGINE_VENDOR"] = vendor
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VERL_ENGINE_VENDOR", None)
        else:
            os.environ["VERL_ENGINE_VENDOR"] = previous


class MAPOTrainingWorker(TrainingWorker):
    """veRL's TrainingWorker whose engine is MAPO's for the backend when one is registered."""

    def __init__(self, config: DictConfig):
        with _engine_vendor(MAPO_ENGINE_VENDOR):
            super().__init__(config)


def _ablate_sample(sample: dict | None, mapo: MAPOConfig, generator: torch.Generator) -> dict | None:
    for kind in map(modality, mapo.modalities):
        if kind is AUDIO:
            sample = ablate_audio(sample, mapo.ablation, noise_scale=mapo.noise_scale, generator=generator,
                                  scope=mapo.text_only_modality_scope)
        else:
            sample = ablate_modality(sample, kind, mapo.ablation, noise_scale=mapo.noise_scale, generator=generator)
    return sample


def ablate_batch(data: TensorDict, mapo: MAPOConfig) -> torch.Tensor:
    """Remove the configured modalities from every sample of a worker batch, in place, as ``mapo`` (the
    worker's own config) says: modalities, ablation mode, noise scale, modality scope.

    Pops the step's noise seed (:data:`~mapo_verl.core.contract.ABLATION_SEED_KEY`, the one value the
    trainer sends) and rewrites ``multi_modal_inputs``. Returns ``[B]`` int64 flags: the rows whose
    inputs held features of one of the modalities (the others keep ω̃ ≡ 1 and no attention term).
    """
    seed = tu.pop(data, ABLATION_SEED_KEY, default=None)
    if seed is None:
        raise ValueError(f"the ablated pass needs {ABLATION_SEED_KEY!r} (the step's noise seed) in the batch's "
                         "extra_info: the MAPO trainer sends it")
    batch_size = data.batch_size[0]
    samples = tu.get(data, "multi_modal_inputs", default=None)
    if samples is None:
        samples = [None] * batch_size
    generator = torch.Generator().manual_seed(int(seed))
    kinds = [modality(name) for name in mapo.modalities]
    flags = torch.tensor([any(has_modality(sample, kind) for kind in kinds) for sample in samples],
                         dtype=torch.int64)
    if bool(flags.any()):
        ablated = [_ablate_sample(sample, mapo, generator) for sample in samples]
        tu.assign_non_tensor_stack(data, "multi_modal_inputs", ablated)
    return flags


def _ablated_output(output: TensorDict | None, has_audio_flags: torch.Tensor) -> TensorDict | None:
    """Keep only the ablated entropies (renamed, so the policy's ``entropy`` field survives)."""
    if output is None:  # not the rank that collects outputs
        return None
    if "entropy" not in output.keys():
        raise RuntimeError("the ablated pass returned no entropy: the engine ignored calculate_entropy=True")
    result = tu.get_tensordict({ABLATED_ENTROPY_FIELD: output["entropy"], HAS_AUDIO_FIELD: has_audio_flags})
    if "metrics" in output.keys():
        tu.assign_non_tensor(result, metrics=tu.get(output, "metrics"))
    return result.cpu()


class MAPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """ActorRolloutRefWorker with MAPO's actor engine and the audio-ablated pass."""

    actor_worker_cls = MAPOTrainingWorker
    ref_worker_cls = MAPOTrainingWorker
    text_ref: TrainingWorker | None = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        text_ref_model = mapo_config_from(self.config.actor).text_ref_model
        if "actor" in self.role and text_ref_model is not None:
            # before veRL's init_model, which renames the reference section's keys in place
            self.text_ref = build_text_reference(self.config, text_ref_model, self.ref_worker_cls)
            self.set_dispatch_collect(mesh_name=TEXT_REF_MESH, **self.text_ref.get_dispatch_collect())
        super().init_model()
        if self.actor is None:
            return
        attention = mapo_config_from(self.config.actor).attention
        engine = self.actor.engine
        if attention.enabled and not getattr(engine, "supports_mapo_attention_loss", False):
            raise RuntimeError(
                f"{CONFIG_PREFIX}.attention.coef={attention.coef} > 0 but the actor engine is "
                f"{type(engine).__name__}, which has no attention-loss hooks: MAPO registers engines for "
                "fsdp/fsdp2 and megatron (vendor 'mapo'); the loss would be silently ignored"
            )

    def _run_ablated(self, engine_worker: TrainingWorker, data: TensorDict) -> TensorDict | None:
        flags = ablate_batch(data, mapo_config_from(self.config.actor))
        tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
        return _ablated_output(engine_worker.infer_batch(data), flags)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="ref"))
    def compute_ablated_entropy_ref(self, data: TensorDict) -> TensorDict:
        """Entropies of the frozen reference on the audio-ablated batch."""
        if self.ref is None:
            raise RuntimeError("this worker holds no reference model; use compute_ablated_entropy_actor")
        return self._run_ablated(self.ref, data)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_ablated_entropy_actor(self, data: TensorDict) -> TensorDict:
        """Entropies of the actor (current weights, or its LoRA base with ``no_lora_adapter``)."""
        return self._run_ablated(self.actor, data)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name=TEXT_REF_MESH))
    def compute_ablated_entropy_text_ref(self, data: TensorDict) -> TensorDict:
        """Entropies of the external text reference (``text_ref_model``) on the audio-ablated batch."""
        if self.text_ref is None:
            raise RuntimeError("this worker holds no text reference: text_ref_model is unset or the role has no actor")
        return self._run_ablated(self.text_ref, data)
