"""veRL 0.9.1 FSDP engine with MAPO's attention loss (``η·L_attn``, docs/DESIGN.md "The attention branch").

:class:`MAPOFSDPEngineWithLMHead` is veRL's ``FSDPEngineWithLMHead`` plus, during the policy
update only (``forward_only=False``) and only when ``η > 0``:

1. :class:`mapo_verl.hf.AudioMassProbe` hooks on the configured decoder layers record the
   audio mass ``a`` of every position by the indicator-V trick (one extra attention
   forward/backward per hooked layer, no ``S×S`` tensor);
2. the masses are mapped to response positions exactly as veRL maps ``log_probs``
   (:func:`verl.workers.utils.padding.no_padding_2_padding`): ``a_t`` is the mass of the
   query that predicts response token ``t``, so it lines up with ``advantages`` and with the
   trainer's ``mapo_attn_coef`` / ``mapo_attn_gate``;
3. ``η · L_attn`` (:func:`mapo_verl.core.attention_objective_from_coefficients`) is added to
   the loss veRL's ``ppo_loss`` returns, with normalisers counted over the whole mini-batch
   and all data-parallel ranks, so the gradient does not depend on the micro-batch split.

With ``η = 0`` (or a policy-loss config without the ``mapo`` section) every call goes
straight to the parent: bit-identical losses and gradients.

η, layers, reductions and ε come from ``actor_rollout_ref.actor.policy_loss.mapo.attention``
(:class:`mapo_verl.config.AttentionLossConfig`), read from the ``config`` that veRL binds to
its loss function (``functools.partial(ppo_loss, config=actor_config)``), so a
hyper-parameter has one home. The audio keys are the positions where ``input_ids`` equals the
model's audio token id. Rows without any audio token are left out of the branch (their
coefficients are ignored and they do not count in ``G`` / ``N``).

Metrics: ``mapo/attn_loss`` (``L_attn`` without η, per micro-batch, summed like
``actor/pg_loss``), ``mapo/audio_mass`` (token mean over the response tokens of rows with
audio; ``mapo/<modality>_mass`` for other ``modalities``), ``mapo/audio_mass/decile_<k>`` (by
relative response position ``(t-1)/T`` in tenths)
and ``mapo/audio_mass/late_early_ratio`` (mean mass over the last 20 % of response positions
divided by that over the first 20 %; < 1 means the response listens less as it goes on).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id
from verl.utils.metric import AggregationType, Metric
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.padding import no_padding_2_padding

from mapo_verl.modalities import key_mask
from mapo_verl.config import AttentionLossConfig
from mapo_verl.core.contract import ATTN_LOSS_METRIC, CONFIG_PREFIX, MAPO_ENGINE_VENDOR
from mapo_verl.hf import AudioMassProbe, MassCapture
from mapo_verl.verl_ext.attention_branch import AttentionBranch, attention_key_ids, attention_settings

__all__ = ["MAPOFSDPEngineWithLMHead"]


@dataclass
class _AttentionUpdate:
    """One ``forward_backward_batch`` of the policy update: the branch, and the current micro-batch's capture."""

    branch: AttentionBranch
    capture: MassCapture | None = None
    pad_size: int = 0
    padded_attention_mask: torch.Tensor | None = None

    def mass_metrics(self, dp_group: Any) -> dict[str, Metric]:
        """Global (all dp ranks) audio-mass metrics of this mini-batch; one collective."""
        totals = self.branch.statistics.packed().to(get_device_id())
        torch.distributed.all_reduce(totals, op=torch.distributed.ReduceOp.SUM, group=dp_group)
        return {
            key: Metric(aggregation=AggregationType.MEAN, value=value)
            for key, value in self.branch.statistics.metrics_from(totals).items()
        }


@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"],
                         vendor=MAPO_ENGINE_VENDOR)
class MAPOFSDPEngineWithLMHead(FSDPEngineWithLMHead):
    """veRL's FSDP actor engine plus MAPO's attention loss during the policy update."""

    supports_mapo_attention_loss = True
    _mapo_probes: dict | None = None
    _mapo_update: _AttentionUpdate | None = None

    # --- batch level -------------------------------------------------------------------

    def forward_backward_batch(self, data: TensorDict, loss_function: Callable, forward_only: bool = False) -> dict:
        settings = None if forward_only else attention_settings(loss_function)
        if settings is None or not settings[1].enabled:
            return super().forward_backward_batch(data, loss_function, forward_only=forward_only)
        actor_config, attention = settings
        update = self._begin_attention_update(data, actor_config, attention)
        with self._probe(attention).installed():
            self._mapo_update = update
            try:
                output = super().forward_backward_batch(data, loss_function, forward_only=forward_only)
            finally:
                self._mapo_update = None
        output["metrics"].update(update.mass_metrics(self.get_data_parallel_group()))
        return output

    def _probe(self, attention: AttentionLossConfig) -> AudioMassProbe:
        key = (tuple(attention.layers), attention.head_reduce)
        if self._mapo_probes is None:
            self._mapo_probes = {}
        if key not in self._mapo_probes:
            self._mapo_probes[key] = AudioMassProbe(self.module, attention.layers, head_reduce=attention.head_reduce)
        return self._mapo_probes[key]

    def _begin_attention_update(self, data: TensorDict, actor_config: Any, attention: AttentionLossConfig
                                ) -> _AttentionUpdate:
        if self.ulysses_sequence_parallel_size > 1:
            raise NotImplementedError(
                f"{CONFIG_PREFIX}.attention.coef > 0 is not supported with Ulysses sequence parallelism "
                f"(ulysses_sequence_parallel_size={self.ulysses_sequence_parallel_size}): the audio-key mask would "
                "have to follow the sequence sharding inside the model; use sequence parallel size 1"
            )
        if tu.get_non_tensor_data(data=data, key="distillation_use_topk", default=False):
            raise NotImplementedError(f"{CONFIG_PREFIX}.attention.coef > 0 cannot be combined with top-k distillation")
        audio_ids = attention_key_ids(self.module, actor_config)
        return _AttentionUpdate(AttentionBranch.begin(data, attention, actor_config, audio_ids,
                                                    self.get_data_parallel_group(), get_device_id()))

    # --- micro-batch level ---------------------------------------------------------------

    def prepare_model_inputs(self, micro_batch: TensorDict) -> tuple[dict, dict]:
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        update = self._mapo_update
        if update is not None:
            input_ids = model_inputs["input_ids"]
            audio = key_mask(input_ids, update.branch.audio_ids)
            attention_mask = model_inputs.get("attention_mask")
            if attention_mask is not None:  # padded layout [B, S]
                audio &= attention_mask.bool()
            update.pad_size = int(output_args.get("pad_size", 0))
            if update.pad_size:  # packed layout: veRL's bucket padding is never audio
                audio[..., -update.pad_size:] = False
            update.padded_attention_mask = attention_mask
            update.capture = self._probe(update.branch.attention).begin(audio)
        return model_inputs, output_args

    def forward_step(self, micro_batch: TensorDict, loss_function: Callable, forward_only: bool):
        if self._mapo_update is None or forward_only:
            return super().forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)
        with_attention = functools.partial(self._loss_with_attention, loss_function, self._mapo_update)
        return super().forward_step(micro_batch, loss_function=with_attention, forward_only=forward_only)

    def _response_mass(self, update: _AttentionUpdate, data: TensorDict) -> torch.Tensor:
        """``a`` of this micro-batch at response positions ``[B, T]``, aligned like ``log_probs``."""
        mass = update.capture.mass(update.branch.attention.layer_reduce)
        if update.padded_attention_mask is None:  # packed [1, total_nnz + pad]
            values = self._gather_and_unpad_packed(mass[0], update.pad_size)
        else:  # padded [B, max_len], right-padded rows
            values = mass[update.padded_attention_mask.bool()]
        return no_padding_2_padding(values, data)

    def _loss_with_attention(self, loss_function: Callable, update: _AttentionUpdate, *, model_output: dict,
                             data: TensorDict, dp_group: Any = None) -> tuple[torch.Tensor, dict]:
        loss, metrics = loss_function(model_output=model_output, data=data, dp_group=dp_group)
        attn_loss = update.branch.objective(self._response_mass(update, data), data, data["dp_size"])
        metrics[ATTN_LOSS_METRIC] = Metric(value=attn_loss.detach(), aggregation=AggregationType.SUM)
        return loss + update.branch.attention.coef * attn_loss, metrics
