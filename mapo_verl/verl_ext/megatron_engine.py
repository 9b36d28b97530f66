"""veRL 0.9.1's Megatron engine with audio inputs and MAPO's attention loss (docs/DESIGN.md "The attention branch", "Megatron").

:class:`MAPOMegatronEngine` subclasses veRL's ``MegatronEngineWithLMHead`` and changes two
things, leaving every other code path (micro-batching, schedules, ``ppo_loss``, metrics) to
veRL:

1. **Audio inputs.** veRL's Megatron forward passes only image/video keys to the model.
   For every forward (old log-prob, reference, update) the engine adds the batch's audio
   features (:data:`AUDIO_MODEL_KEYS` found in ``multi_modal_inputs``) to the model call,
   through a forward pre-hook held for that one call. A model whose ``forward`` takes none
   of them fails naming the model class.
2. **Attention loss.** In a training pass whose loss function is veRL's
   ``partial(ppo_loss, config=actor_config)`` with a MAPO policy-loss config and η > 0,
   it installs :class:`~mapo_verl.megatron.attention_hook.AudioMassHook` on the chosen
   layers (once) and attaches one request per micro-batch to the chunk holding them. The
   request's objective maps ``a_t`` from the model's token layout back to veRL's
   response-aligned ``[B, T_resp]`` grid with veRL's own functions
   (``postprocess_thd_engine`` / ``postprocess_bshd_engine`` — the CP gather whose other
   ranks' shares are detached — then ``no_padding_2_padding``, the alignment of
   ``log_probs``: ``a_t`` is read at the query position that predicts response token t),
   and calls :func:`mapo_verl.core.attention_objective_from_coefficients` with the
   mini-batch's global normalisers, summed over data-parallel ranks as on the FSDP path:
   ``G`` = responses of rows that hold audio, ``N`` = their gated tokens (rows without an
   audio token are left out of the branch), ``dp_size``, the ``loss_scale_factor`` horizon. The injected gradient
   is multiplied as veRL's main loss is: by the CP size when the loss function returns
   ``(loss, metrics)`` (Megatron multiplies by ``cp_size / num_microbatches`` and veRL by
   ``num_microbatches``), by ``routed_num_tokens / dp_size`` in the per-token-loss regime.
   Summed over micro-batches and averaged over data-parallel ranks, η·L_attn is then the
   step's loss exactly as on the FSDP path.

Batch fields consumed (response-aligned like ``advantages``): ``mapo_attn_coef`` (c_t,
float) and ``mapo_attn_gate`` (0/1); the audio keys are the tokens of
:func:`mapo_verl.modalities.key_token_ids` (placeholders, and audio start/end markers
unless ``attention.include_audio_markers=false``).

Metrics (on the logging rank, reduced over pipeline stages and data-parallel ranks; TP and
CP ranks hold identical values because the hook gathers heads and veRL's postprocess
gathers the sequence): ``mapo/attn_loss`` (η excluded, summed over micro-batches like
``actor/pg_loss``), ``mapo/audio_mass`` (mean a_t over the response tokens of rows with
audio; ``mapo/<modality>_mass`` for other ``modalities``), ``mapo/audio_mass/decile_{0..9}`` (by
relative response position ``(t-1)/T``) and
``mapo/audio_mass/late_early_ratio`` (mean over the last 20 % of positions over the first
20 %) — the FSDP engine's definitions.

Supported model paths (tested: megatron-core 0.16.1 GPT models; Megatron-Bridge 0.5.1 with
megatron-core 0.18.2): megatron-core GPT language models on THD (packed) or BSHD inputs, any
TP/PP/VPP, CP through Transformer Engine on THD; models that build their own multimodal
positions (``vision_config``, or an Omni ``thinker_config``: Megatron-Bridge's Qwen2.5-Omni and
Qwen3-Omni models) on BSHD inputs with CP = 1 (refused before Ray starts otherwise, by
:func:`mapo_verl.verl_ext.recipe_checks.megatron_audio_model_problems`); Qwen2-Audio with CP = 1.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from tensordict import TensorDict
from verl.models.mcore.util import (
    postprocess_bshd_engine,
    postprocess_thd_engine,
    preprocess_bshd_engine,
    preprocess_thd_engine,
)
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.utils.megatron_utils import unwrap_model
from verl.utils.metric import AggregationType, Metric
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.megatron.transformer_impl import MegatronEngineWithLMHead
from verl.workers.utils.padding import no_padding_2_padding

from mapo_verl.modalities import AUDIO_MODEL_KEYS, key_mask
from mapo_verl.config import AttentionLossConfig
from mapo_verl.core.contract import ATTN_LOSS_METRIC, COEF_FIELD, CONFIG_PREFIX, MAPO_ENGINE_VENDOR
from mapo_verl.megatron.attention_hook import AudioMassHook, AudioMassRequest, sum_over_pipeline
from mapo_verl.patches.megatron_bridge import computes_own_positions
from mapo_verl.verl_ext.attention_branch import AttentionBranch, attention_key_ids, attention_settings

__all__ = ["MAPOMegatronEngine"]


@EngineRegistry.register(model_type="language_model", backend="megatron", device=["cuda", "cpu"],
                         vendor=MAPO_ENGINE_VENDOR)
class MAPOMegatronEngine(MegatronEngineWithLMHead):
    """veRL's Megatron LM engine + audio inputs + MAPO's attention loss (module docstring).

    Selected by veRL's ``EngineRegistry`` for vendor ``"mapo"`` (``VERL_ENGINE_VENDOR=mapo``
    in the worker process, or the MAPO worker's explicit choice).
    """

    supports_mapo_attention_loss = True

    _mapo_hook: AudioMassHook | None = None
    _mapo_hook_key: tuple | None = None
    # per forward_backward_batch of the policy update: the branch, and this rank's L_attn per micro-batch
    _mapo_branch: AttentionBranch | None = None
    _mapo_losses: list[float] | None = None

    # ------------------------------------------------------------------ step
    def forward_backward_batch(self, data: TensorDict, loss_function: Callable, forward_only: bool = False) -> dict:
        settings = None if forward_only else attention_settings(loss_function)
        if settings is None and not forward_only and COEF_FIELD in data.keys():
            raise ValueError(f"the batch carries {COEF_FIELD!r} but the loss function has no MAPO config: the "
                             f"actor's loss must be partial(ppo_loss, config=actor_config) with {CONFIG_PREFIX} set")
        if settings is None or not settings[1].enabled:
            self._mapo_branch = None
            return super().forward_backward_batch(data, loss_function, forward_only=forward_only)
        actor_config, attention = settings
        audio_ids = attention_key_ids(self.model_config.hf_config, actor_config)
        branch = AttentionBranch.begin(data, attention, actor_config, audio_ids, self.get_data_parallel_group(),
                                       get_device_id())
        self._install_hook(attention)
        self._mapo_branch, self._mapo_losses = branch, []
        try:
            output = super().forward_backward_batch(data, loss_function, forward_only=False)
            self._report(output, tu.get_non_tensor_data(data, key="num_micro_batch", default=0))
        finally:
            self._mapo_branch = None
        return output

    def _install_hook(self, attention: AttentionLossConfig) -> None:
        key = (tuple(attention.layers), attention.head_reduce, attention.layer_reduce, attention.coef)
        if self._mapo_hook is not None and self._mapo_hook_key == key:
            return
        if self._mapo_hook is not None:
            self._mapo_hook.remove()
        self._mapo_hook = AudioMassHook(self.module, attention.layers, head_reduce=attention.head_reduce,
                                        layer_reduce=attention.layer_reduce, coef=attention.coef,
                                        config_key=f"{CONFIG_PREFIX}.attention.layers")
        self._mapo_hook_key = key

    def _report(self, output: dict, num_micro_batch: int) -> None:
        """Reduce this step's values over PP and DP (every rank) and add them to the logging rank's metrics."""
        local = self._mapo_losses
        losses = torch.zeros(max(num_micro_batch, len(local)), dtype=torch.float64, device=get_device_id())
        losses[: len(local)] = torch.tensor(local, dtype=torch.float64)
        totals = sum_over_pipeline(torch.cat([losses, self._mapo_branch.statistics.packed().to(losses.device)]))
        losses, statistics = totals[: losses.numel()], totals[losses.numel():].clone()
        if dist.is_initialized():
            dist.all_reduce(statistics, group=self.get_data_parallel_group())
        if not mpu.is_pipeline_last_stage(ignore_virtual=True) or "metrics" not in output:
            return
        attn_loss = Metric(AggregationType.SUM)
        attn_loss.extend(losses.cpu().tolist())  # one value per micro-batch, like actor/pg_loss
        output["metrics"][ATTN_LOSS_METRIC] = attn_loss
        output["metrics"].update(
            {key: Metric(AggregationType.MEAN, value)
             for key, value in self._mapo_branch.statistics.metrics_from(statistics).items()}
        )

    # ------------------------------------------------------------------ per micro-batch
    def forward_step(self, batch_iter: Iterator, model: torch.nn.Module, logits_processor_func: Callable,
                     postprocess_micro_batch_func: Callable) -> Any:
        batch = next(batch_iter)
        chunk_index = next(i for i, chunk in enumerate(self.module) if chunk is model)
        with ExitStack() as stack:
            stack.enter_context(self._audio_inputs(model, batch))
            if self._mapo_branch is not None and self._mapo_hook.owns(chunk_index):
                request = self._attention_request(model, batch.to(get_device_id()))
                stack.enter_context(self._mapo_hook.attach(chunk_index, request))
            result = super().forward_step(iter([batch]), model, logits_processor_func, postprocess_micro_batch_func)
        if self._mapo_branch is not None and self._mapo_hook.owns(chunk_index):
            self._mapo_losses.append(float(request.loss))
        return result

    @contextmanager
    def _audio_inputs(self, model: torch.nn.Module, batch: TensorDict) -> Iterator[None]:
        """Add the batch's audio features to the model call made inside the block."""
        multi_modal = self.prepare_model_inputs(batch)["multi_modal_inputs"]
        audio = {k: v for k, v in multi_modal.items() if k in AUDIO_MODEL_KEYS}
        if not audio:
            yield
            return
        top = unwrap_model(model)
        parameters = inspect.signature(top.forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        refused = [k for k in audio if k not in parameters and not takes_any]
        if refused:
            raise ValueError(f"the batch has audio inputs {refused} but {type(top).__name__}.forward does not take "
                             "them: use a Megatron model with an audio encoder (Megatron-Bridge's Qwen2.5-Omni "
                             "thinker or Qwen2-Audio provider)")

        def add_audio(module, args, kwargs):
            kwargs.update({k: v.to(get_device_id()) if isinstance(v, torch.Tensor) else v for k, v in audio.items()})
            return args, kwargs

        handle = top.register_forward_pre_hook(add_audio, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _attention_request(self, model: torch.nn.Module, batch: TensorDict) -> AudioMassRequest:
        """The micro-batch's audio keys in the model's token layout and its objective (module docstring)."""
        branch = self._mapo_branch
        top = unwrap_model(model)
        input_ids = batch["input_ids"]
        audio = key_mask(input_ids.values(), branch.audio_ids).to(input_ids.dtype)
        audio = torch.nested.nested_tensor_from_jagged(audio, offsets=input_ids.offsets())
        use_fp8_padding = top.config.fp8 in ["e4m3", "hybrid"]
        local_cp_size = tu.get_non_tensor_data(batch, key="local_cp_size", default=None)
        cp_layout = self._get_context_parallel_layout(top)
        vision_model = computes_own_positions(self.model_config.hf_config)
        if self.engine_config.use_remove_padding:
            if vision_model:
                raise NotImplementedError("MAPO's attention loss on a vision-language Megatron model needs BSHD "
                                          "inputs (use_remove_padding=False): the model packs THD rows itself")
            pad_bucket = self.engine_config.pad_to_length_bucket if self.engine_config.pad_to_length else None
            keys, packed_seq_params, _ = preprocess_thd_engine(
                audio, pre_process=True, use_fp8_padding=use_fp8_padding, local_cp_size=local_cp_size,
                pad_to_length_bucket=pad_bucket, cp_layout=cp_layout)

            def to_sequences(mass):
                return postprocess_thd_engine(mass, packed_seq_params, input_ids, input_ids.shape[0],
                                              post_process=True, local_cp_size=local_cp_size, cp_layout=cp_layout)
        else:
            if vision_model and mpu.get_context_parallel_world_size() > 1:
                raise NotImplementedError("MAPO's attention loss on a vision-language Megatron model supports "
                                          "context_parallel_size=1 only: such models split the sequence themselves")
            keys, bshd_mask, _ = preprocess_bshd_engine(
                audio, pre_process=True, use_fp8_padding=use_fp8_padding,
                forced_max_seqlen=tu.get_non_tensor_data(batch, key="forced_max_seqlen", default=None))

            def to_sequences(mass):
                return postprocess_bshd_engine(mass, bshd_mask, post_process=True)

        dp_size = tu.get_non_tensor_data(batch, key="dp_size", default=1)

        def objective(mass: torch.Tensor) -> torch.Tensor:
            # a_t at response positions [B, T_resp], aligned with log_probs
            return branch.objective(no_padding_2_padding(to_sequences(mass), batch), batch, dp_size)

        if self.tf_config is not None and self.tf_config.calculate_per_token_loss:
            routed = tu.get_non_tensor_data(batch, key="routed_num_tokens", default=None)
            multiplier = float(self._routed_num_tokens(batch) if routed is None else routed) / dp_size
        else:
            multiplier = float(mpu.get_context_parallel_world_size())
        return AudioMassRequest(audio_keys=keys.bool(), objective=objective, grad_multiplier=multiplier)
