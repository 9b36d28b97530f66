"""A rollout backend that generates with HF ``generate`` — for dry runs and CI, not for speed.

veRL 0.9.1 rolls out through vLLM, SGLang or TensorRT-LLM servers, none of which run on a
CPU-only machine. This backend (``actor_rollout_ref.rollout.name=hf``) has the same shape
as veRL's vLLM backend, so the trainer, agent loop and weight-sync code paths are veRL's own:

- :class:`HFRolloutReplica` (``RolloutReplicaRegistry``) launches one :class:`HFRolloutServer`
  Ray actor per replica, next to the hybrid worker it belongs to;
- :class:`HFRolloutServer` holds its own copy of the HF model and answers veRL's
  token-in-token-out ``generate`` (text, audio and images: the clips are turned into
  ``input_features`` / ``feature_attention_mask``, the images into ``pixel_values`` /
  ``image_grid_thw`` by the model's processor, and checked against the prompt's placeholders);
- :class:`HFServerAdapter` (``verl.workers.rollout.base._ROLLOUT_REGISTRY``) lives in the
  hybrid actor worker; after every policy update veRL hands it the actor's full weights
  (``get_per_tensor_param``), which it streams to the server in buckets. The server
  refuses unknown names and, at the end of a sync, reports any parameter it did not get,
  so generation always uses exactly the actor's current weights.

Only hybrid (colocated, synchronous) mode with one process per replica is supported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from typing import Any, Generator, Optional

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

__all__ = [
    "CHECKSUM_LOG_PREFIX",
    "HFRolloutReplica",
    "HFRolloutServer",
    "HFServerAdapter",
    "server_actor_name",
]

logger = logging.getLogger(__name__)


# log line of every completed weight sync: "<prefix> replica=<r> step=<k> checksum=<float64 sum>"
CHECKSUM_LOG_PREFIX = "[mapo_verl hf-rollout weights]"


def server_actor_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's :class:`HFRolloutServer`."""
    return f"mapo_hf_rollout_server_{replica_rank}"


def _rollout_world_size(config) -> int:
    return config.tensor_model_parallel_size * config.data_parallel_size * config.pipeline_model_parallel_size


def _require_single_process_replicas(config) -> None:
    if _rollout_world_size(config) != 1:
        raise ValueError(
            "actor_rollout_ref.rollout.name=hf generates in one process per replica: set "
            "actor_rollout_ref.rollout.tensor_model_parallel_size, data_parallel_size and "
            f"pipeline_model_parallel_size to 1 (got {config.tensor_model_parallel_size}, "
            f"{config.data_parallel_size}, {config.pipeline_model_parallel_size})"
        )


def _checkpoint_renamings(model_type: str) -> list:
    """transformers' renamings of a model type's checkpoint names to its module names (none where the
    installed version keeps them on the model class instead: veRL's ``convert_weight_keys`` reads those)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:
        return []
    return [r for r in get_checkpoint_conversion_mapping(model_type) or () if hasattr(r, "rename_source_key")]


class HFRolloutServer:
    """An HF model answering veRL's token-in-token-out ``generate`` (run as a Ray actor).

    Requests are served one at a time in a worker thread (the model is not re-entrant and a
    weight sync must not interleave with a generation); the actor's event loop stays free.
    """

    def __init__(self, config, model_config, replica_rank: int):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.model import get_hf_auto_model_class

        from mapo_verl.patches.audio_models import audio_family_for_processor

        self.config = omega_conf_to_dataclass(config)
        self.model_config = omega_conf_to_dataclass(model_config)
        self.replica_rank = replica_rank
        self.processor = self.model_config.processor
        self.tokenizer = self.model_config.tokenizer
        self.audio_family = audio_family_for_processor(self.processor)

        auto_class = get_hf_auto_model_class(self.model_config.hf_config)
        self.model = auto_class.from_pretrained(
            self.model_config.local_path,
            config=self.model_config.hf_config,
            torch_dtype=torch.float32,
            attn_implementation="sdpa",
            trust_remote_code=self.model_config.trust_remote_code,
        ).eval()
        # A full Omni checkpoint (Megatron-Bridge's input) generates with its thinker; its weights
        # are synced under the checkpoint's own names (``thinker.*``), as the bridge exports them.
        self.generator = getattr(self.model, "thinker", self.model)
        torch.manual_seed(self.config.seed + replica_rank)  # rollout.seed: reproducible dry runs
        self._params = self._syncable_tensors()
        self._renamings = _checkpoint_renamings(self.model_config.hf_config.model_type)
        self._received: set[str] = set()
        self._lock = asyncio.Lock()
        self.global_steps: Optional[int] = None

        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self._eos_token_ids = eos
        self._pad_token_id = self.tokenizer.pad_token_id
        # Placeholder tokens are slots the model fills with audio/image features; one sampled
        # into a response would be "filled" when training on it. A trained model does not emit
        # them, a random one does: they are never sampled (-inf logits).
        hf_config = self.generator.config
        self._placeholder_ids = sorted(
            {
                token_id
                for attr in ("audio_token_id", "image_token_id", "video_token_id")
                if (token_id := getattr(hf_config, attr, None)) is not None
            }
        )

    def _syncable_tensors(self) -> dict[str, torch.Tensor]:
        """The model's state tensors under the names veRL's actor sends them (its weight-key conversion)."""
        from verl.utils.model import convert_weight_keys

        return convert_weight_keys(self.model.state_dict(keep_vars=True), self.model)

    def _param_name(self, name: str) -> str | None:
        """The rollout tensor a synced name refers to: the name itself, or the name in the checkpoint
        layout renamed to the model's (Megatron-Bridge exports Qwen2.5-VL as ``model.*`` / ``visual.*``,
        which transformers 5 loads into ``model.language_model.*`` / ``model.visual.*``)."""
        if name in self._params:
            return name
        for renaming in self._renamings:
            name = renaming.rename_source_key(name)[0]
        return name if name in self._params else None

    # ---- generation -------------------------------------------------------------------

    def _max_new_tokens(self, prompt_len: int, sampling_params: dict) -> int:
        budget = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        requested = sampling_params.pop("max_tokens", sampling_params.pop("max_new_tokens", None))
        if requested is None:
            requested = min(self.config.response_length, budget - prompt_len)
        room = budget - prompt_len
        if room < 1:
            raise ValueError(f"prompt of {prompt_len} tokens leaves no room to generate within {budget} tokens")
        return max(1, min(int(requested), room))

    def _audio_inputs(self, prompt_ids: list[int], audio_data, mm_processor_kwargs, request_id: str) -> dict:
        from mapo_verl.patches.audio_models import audio_processor_inputs, check_audio_placeholders

        if self.audio_family is None:
            raise ValueError(
                f"request {request_id}: audio given, but {type(self.processor).__name__} of "
                f"{self.model_config.hf_config.model_type} is not an audio model processor"
            )
        inputs = audio_processor_inputs(self.processor, audio_data, mm_processor_kwargs)
        check_audio_placeholders(
            prompt_ids,
            inputs["feature_attention_mask"],
            audio_token_id=self.tokenizer.convert_tokens_to_ids(self.processor.audio_token),
            family=self.audio_family,
            sample=f"rollout request {request_id}",
        )
        return inputs

    def _image_inputs(self, prompt_ids: list[int], image_data, request_id: str) -> dict:
        image_processor = getattr(self.processor, "image_processor", None)
        image_token_id = getattr(self.generator.config, "image_token_id", None)
        if image_processor is None or image_token_id is None:
            raise ValueError(f"request {request_id}: images given, but {type(self.processor).__name__} of "
                             f"{self.model_config.hf_config.model_type} has no image processor / image token")
        inputs = dict(image_processor(images=image_data, return_tensors="pt"))
        merge = getattr(image_processor, "merge_size", 1)
        expected = int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2
        ids = torch.tensor(prompt_ids)
        found = int((ids == image_token_id).sum())
        if found != expected:
            raise ValueError(f"request {request_id}: the prompt holds {found} image placeholders, its "
                             f"{len(image_data)} image(s) need {expected} (grids {inputs['image_grid_thw'].tolist()})")
        # Qwen2.5-VL builds its 3-D mRoPE positions from the grid and the token types (1 = image), as the actor
        # does; the Omni thinkers build them without (and refuse the argument)
        if "mm_token_type_ids" in inspect.signature(self.generator.forward).parameters:
            inputs["mm_token_type_ids"] = (ids == image_token_id).to(torch.int32)[None]
        return inputs

    @torch.no_grad()
    def _generate(self, prompt_ids: list[int], sampling_params: dict, mm_inputs: dict) -> tuple[list[int], list[float]]:
        temperature = float(sampling_params.get("temperature", 1.0))
        top_k = int(sampling_params.get("top_k", -1) or -1)
        do_sample = temperature > 0
        max_new_tokens = self._max_new_tokens(len(prompt_ids), sampling_params)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long)
        generate_kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if self.config.ignore_eos else None,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            # veRL's top_k=-1 / top_p=1 mean "no truncation"; HF needs 0 / 1.0 explicitly, or the
            # model's generation_config (HF default: top_k=50) would truncate sampling
            top_p=float(sampling_params.get("top_p", 1.0)) if do_sample else None,
            top_k=max(top_k, 0) if do_sample else None,
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            eos_token_id=self._eos_token_ids,
            pad_token_id=self._pad_token_id,
            suppress_tokens=self._placeholder_ids or None,
            return_dict_in_generate=True,
            output_logits=True,
            **mm_inputs,
        )
        output = self.generator.generate(**generate_kwargs)
        new_tokens = output.sequences[0, len(prompt_ids) :].tolist()
        for end, token in enumerate(new_tokens):
            if token in self._eos_token_ids:
                new_tokens = new_tokens[: end + 1]
                break
        # log-probs as the actor computes them: full-vocabulary softmax of logits / temperature
        scale = temperature if do_sample else 1.0
        log_probs = [
            torch.log_softmax(output.logits[step][0].float() / scale, dim=-1)[token].item()
            for step, token in enumerate(new_tokens)
        ]
        return new_tokens, log_probs

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
    ) -> TokenOutput:
        from verl.utils import normalize_token_ids

        if video_data:
            raise NotImplementedError(
                f"request {request_id}: the hf rollout backend generates from text, audio and images; video needs vLLM"
            )
        prompt_ids = normalize_token_ids(prompt_ids)
        sampling_params = dict(sampling_params)
        want_log_probs = bool(sampling_params.pop("logprobs", False))
        mm_inputs = self._audio_inputs(prompt_ids, audio_data, mm_processor_kwargs, request_id) if audio_data else {}
        if image_data:
            mm_inputs.update(self._image_inputs(prompt_ids, image_data, request_id))
        async with self._lock:
            token_ids, log_probs = await asyncio.to_thread(self._generate, prompt_ids, sampling_params, mm_inputs)
            global_steps = self.global_steps
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if want_log_probs else None,
            stop_reason="completed",
            extra_fields={"global_steps": global_steps},
        )

    # ---- weight sync ------------------------------------------------------------------

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Copy one bucket of the actor's weights into the model (names as the actor sends them)."""
        async with self._lock:
            params = [self._param_name(name) for name, _ in named_tensors]
            unknown = [name for (name, _), param in zip(named_tensors, params) if param is None]
            if unknown:
                raise KeyError(f"weight sync sent tensors the rollout model does not have: {unknown[:5]}")
            with torch.no_grad():
                for (name, tensor), param in zip(named_tensors, params):
                    target = self._params[param]
                    if tuple(target.shape) != tuple(tensor.shape):
                        raise ValueError(
                            f"weight sync: {name} has shape {tuple(tensor.shape)}, rollout model {tuple(target.shape)}"
                        )
                    target.copy_(tensor)
                    self._received.add(param)

    async def finish_weight_update(self, global_steps: Optional[int]) -> float:
        """End a sync: every tensor must have been sent; the model then serves version ``global_steps``.

        Returns and prints the float64 sum of the synced tensors, so a run's log shows which
        weights each rollout used (tests compare it with the actor's checkpoint).
        """
        async with self._lock:
            missing = sorted(set(self._params) - self._received)
            self._received = set()
            if missing:
                raise RuntimeError(f"weight sync did not send {len(missing)} rollout tensors, e.g. {missing[:5]}")
            self.global_steps = global_steps
            checksum = float(sum(tensor.detach().double().sum() for tensor in self._params.values()))
        print(
            f"{CHECKSUM_LOG_PREFIX} replica={self.replica_rank} step={global_steps} checksum={checksum!r}", flush=True
        )
        return checksum

    # ---- veRL's server control surface: nothing to free or resume on CPU --------------

    async def wake_up(self, tags: Optional[list[str]] = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


class HFRolloutReplica(RolloutReplica):
    """One :class:`HFRolloutServer` per hybrid worker (rollout world size 1)."""

    async def launch_servers(self):
        _require_single_process_replicas(self.config)
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"the hf rollout backend runs colocated with the actor (hybrid mode), not {self.rollout_mode.value}"
            )
        (worker,) = self.workers
        node_id = await worker.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=server_actor_name(self.replica_rank),
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_actor_name(self.replica_rank)


class HFServerAdapter(BaseRollout):
    """In the hybrid actor worker: streams the actor's weights to this replica's server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        _require_single_process_replicas(self.config)
        self.replica_rank = int(os.environ["RANK"]) if replica_rank == -1 else replica_rank
        self.is_leader_rank = True
        self._server = None
        self._bucket_bytes = self.config.checkpoint_engine.update_weights_bucket_megabytes << 20

    def _server_handle(self):
        if self._server is None:  # the server is launched after the hybrid worker
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        global_steps: Optional[int] = None,
        peft_config: Optional[dict] = None,
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout backend takes full named tensors, not {wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError(
                "the hf rollout backend needs merged weights for LoRA: set actor_rollout_ref.model.lora.merge=True"
            )
        start = time.perf_counter()
        server = self._server_handle()
        bucket: list[tuple[str, torch.Tensor]] = []
        bucket_bytes = 0
        sends = []
        for name, tensor in weights:
            tensor = tensor.detach().to("cpu").contiguous().clone()
            bucket.append((name, tensor))
            bucket_bytes += tensor.numel() * tensor.element_size()
            if bucket_bytes >= self._bucket_bytes:
                sends.append(server.load_weights.remote(bucket))
                bucket, bucket_bytes = [], 0
        if bucket:
            sends.append(server.load_weights.remote(bucket))
        await asyncio.gather(*sends)
        await server.finish_weight_update.remote(global_steps)
        logger.info("hf rollout: weights synced to replica %d in %.2fs", self.replica_rank, time.perf_counter() - start)
