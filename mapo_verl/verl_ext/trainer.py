"""The MAPO trainer: veRL 0.9.1's synchronous v1 trainer with two extra steps.

Selected with ``trainer.v1.trainer_mode=mapo`` (and ``algorithm.adv_estimator=mapo``).
Step order (veRL's, with MAPO's additions marked +):

generate → reward → old log-prob (+ entropy) → **+ audio-ablated pass** → ref log-prob →
advantage (**+ ω̃ folded into GRPO's advantages**, **+ attention coefficients**) → update.

The ablated pass reuses the reference worker's engine (or the actor's LoRA base, or the
current policy with ``ablation_reference=policy``), so no model is loaded twice; with
``text_ref_model`` it runs on that external text reference, an engine of the actor worker.
"""

from __future__ import annotations

import time

import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role, need_reference_policy
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.debug import marked_timer
from verl.workers.utils.padding import response_from_nested, response_to_nested

from mapo_verl.config import TOTAL_SCORE_KEY, mapo_config_from
from mapo_verl.core.contract import (
    ABLATED_ENTROPY_FIELD,
    ABLATION_SEED_KEY,
    COEF_FIELD,
    CONFIG_PREFIX,
    FAILED_FIELD,
    GATE_FIELD,
    HAS_AUDIO_FIELD,
    MAPO_TRAINER_MODE,
)
from mapo_verl.modalities import metric_label
from mapo_verl.pos_gate import PartOfSpeechGate
from mapo_verl.batch_relevance import (
    BatchRelevance,
    attention_fields_for_batch,
    folded_advantages,
    relevance_for_batch,
    relevance_metrics,
)
from mapo_verl.verl_ext.advantage import grpo_advantage_step
from mapo_verl.verl_ext.worker import MAPOActorRolloutRefWorker

__all__ = ["MAPOTrainer"]

_WORKER_ROLES = (Role.Actor, Role.ActorRollout, Role.ActorRolloutRef, Role.RefPolicy)


def _lora_base_is_reference(config: DictConfig) -> bool:
    """veRL's rule: with LoRA the actor's base weights serve as the reference model."""
    model = config.actor_rollout_ref.model
    lora_rank = model.get("lora", {}).get("rank", 0)
    if lora_rank <= 0:
        lora_rank = model.get("lora_rank", 0)
    return lora_rank > 0 or model.get("lora_adapter_path") is not None


def _task_failed(data: TensorDict, key: str) -> torch.Tensor:
    """``fail_g``: the task reward ``key`` of ``reward_extra_info`` is ≤ 0.

    ``key == TOTAL_SCORE_KEY`` reads the total score instead (the explicit opt-in for reward
    functions that return one number). A row without ``key`` is an error naming the key, the
    row and the keys it has: falling back to the total score would count a wrong but
    well-formatted answer as not failed.
    """
    scores = data["rm_scores"].sum(dim=-1)
    if key == TOTAL_SCORE_KEY:
        return scores <= 0
    extra = tu.get(data, "extra_fields", default=None) or [None] * len(scores)
    values = []
    for row, fields in enumerate(extra):
        info = (fields or {}).get("reward_extra_info", {}) if isinstance(fields, dict) else {}
        if key not in info:
            raise KeyError(
                f"{CONFIG_PREFIX}.task_reward_key={key!r} is not in the reward_extra_info of response {row} (it has "
                f"{sorted(info)}): return it from the reward function, set task_reward_key to the task (accuracy) "
                f"key, or set task_reward_key={TOTAL_SCORE_KEY} to mark failures by the total score"
            )
        values.append(float(info[key]))
    return torch.tensor(values) <= 0


@register_trainer(MAPO_TRAINER_MODE)
class MAPOTrainer(PPOTrainerSync):
    """veRL's synchronous trainer plus the ablated pass and MAPO's advantage step."""

    def __init__(self, config: DictConfig):
        self.mapo = mapo_config_from(config)
        self._lora_reference = _lora_base_is_reference(config)
        super().__init__(config)
        # The ablated pass needs a reference engine even when no KL term asks for one.
        self._ablation_on_ref_model = (self.mapo.ablation_reference == "ref" and not self._lora_reference
                                       and self.mapo.text_ref_model is None)
        self.use_reference_policy = self.use_reference_policy or self._ablation_on_ref_model
        self._pos_gate: PartOfSpeechGate | None = None

    # veRL's base class keys its replay buffer, refill and checkpoint behaviour on the
    # literal mode name "sync"; MAPO is that schedule with two extra steps.
    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        if value != MAPO_TRAINER_MODE:
            raise ValueError(f"MAPOTrainer runs with trainer.v1.trainer_mode={MAPO_TRAINER_MODE}, got {value!r}")

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        if self._ablation_on_ref_model and not need_reference_policy(self.config):
            if Role.ActorRollout in self.role_worker_mapping:
                self.role_worker_mapping[Role.ActorRolloutRef] = self.role_worker_mapping.pop(Role.ActorRollout)
                self.mapping[Role.ActorRolloutRef] = self.mapping.pop(Role.ActorRollout)
            elif Role.Actor in self.role_worker_mapping and Role.RefPolicy not in self.role_worker_mapping:
                self.role_worker_mapping[Role.RefPolicy] = self.role_worker_mapping[Role.Actor]
                self.mapping[Role.RefPolicy] = self.mapping[Role.Actor]
        for role in _WORKER_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(MAPOActorRolloutRefWorker)

    # ------------------------------------------------------------------ steps

    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        start = time.perf_counter()
        batch = super()._compute_old_log_prob(batch, metrics)
        old_log_prob_s = time.perf_counter() - start
        with marked_timer("mapo_ablated", self.timing_raw, color="purple"):
            start = time.perf_counter()
            self._run_ablated_pass(batch)
            ablated_s = time.perf_counter() - start
        metrics["mapo/ablated_pass_s"] = ablated_s
        metrics["mapo/ablated_over_old_log_prob"] = ablated_s / max(old_log_prob_s, 1e-9)
        return batch

    def _run_ablated_pass(self, batch: KVBatchMeta) -> None:
        """One no-grad forward with the audio removed; stores ``mapo_ablated_entropy`` per response.

        The worker reads the ablation's static settings (mode, noise scale, scope) from its own config;
        only the per-step noise seed travels with the batch.
        """
        request = {
            ABLATION_SEED_KEY: int(self.global_steps),
            "calculate_entropy": True,
            "compute_loss": False,
            "temperature": self.config.actor_rollout_ref.rollout.temperature,
        }
        if self.mapo.ablation_reference == "ref" and self._lora_reference and self.mapo.text_ref_model is None:
            request["no_lora_adapter"] = True
        batch.extra_info.update(request)
        try:
            if self.mapo.text_ref_model is not None:
                output = self.actor_rollout_wg.compute_ablated_entropy_text_ref(batch)
            elif self._ablation_on_ref_model:
                output = self.ref_policy_wg.compute_ablated_entropy_ref(batch)
            else:
                output = self.actor_rollout_wg.compute_ablated_entropy_actor(batch)
            assert len(output) == len(batch)
        finally:
            for key in (ABLATION_SEED_KEY, "no_lora_adapter"):
                batch.extra_info.pop(key, None)
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[ABLATED_ENTROPY_FIELD, "response_mask"]
        )
        data[ABLATED_ENTROPY_FIELD] = response_from_nested(data.pop(ABLATED_ENTROPY_FIELD), data["response_mask"])
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=data.select(ABLATED_ENTROPY_FIELD))

    def _compute_ref_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        # The reference may exist only for the ablated pass: no KL term, no ref log-probs.
        if not need_reference_policy(self.config):
            return batch
        return super()._compute_ref_log_prob(batch, metrics)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """ω̃ from the ablated pass, veRL's GRPO step, then the folded advantages and the attention fields.

        Data flows one way: the inputs come from the batch, veRL writes GRPO's advantages to the
        batch, and this step reads them back and writes the advantages the actor trains on.
        """
        fields = ["response_mask", "entropy", ABLATED_ENTROPY_FIELD, HAS_AUDIO_FIELD, "responses", "rm_scores",
                  "extra_fields"]
        nested = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        nested_response_mask = nested["response_mask"]
        data = nested.to_padded_tensor()
        relevance = relevance_for_batch(
            data["entropy"], data[ABLATED_ENTROPY_FIELD], data["response_mask"], data[HAS_AUDIO_FIELD], self.mapo,
            pos_gate=self._content_word_gate(data, metrics) if self.mapo.attention.enabled else None,
        )
        with grpo_advantage_step(self.config):
            batch = super()._compute_advantage(batch, metrics)
        # veRL's rollout correction may have masked tokens out: fold over the mask it left
        after = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                select_fields=["advantages", "response_mask"]).to_padded_tensor()
        grpo = after["advantages"]
        advantages = folded_advantages(relevance, grpo, after["response_mask"],
                                       self.config.actor_rollout_ref.actor.loss_agg_mode,
                                       attention_only=self.mapo.attention_only)
        output = {"advantages": advantages}
        if self.mapo.attention.enabled:
            output.update(self._attention_fields(data, relevance, grpo, metrics))
        metrics.update(relevance_metrics(relevance, self.mapo.mask_cap, metric_label(self.mapo.modalities)))
        output = TensorDict({key: response_to_nested(value, nested_response_mask) for key, value in output.items()},
                            batch_size=len(batch))
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

    def _attention_fields(self, data: TensorDict, relevance: BatchRelevance, grpo_advantages: torch.Tensor,
                          metrics: dict) -> dict[str, torch.Tensor]:
        """The response-aligned fields the actor engines read for ``η·L_attn`` (:mod:`mapo_verl.core.contract`)."""
        failed = _task_failed(data, self.mapo.task_reward_key)
        coefficients, gate = attention_fields_for_batch(relevance, grpo_advantages, failed, self.mapo)
        metrics["mapo/attn_gated_token_frac"] = float(gate.sum() / relevance.response_mask.sum().clamp(min=1))
        return {COEF_FIELD: coefficients, GATE_FIELD: gate.to(torch.int64),
                FAILED_FIELD: failed[:, None].expand_as(gate).to(torch.int64)}

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._update_actor(batch, metrics)
        # veRL prefixes every engine metric with "actor/"; MAPO's keep their own namespace.
        for key in [k for k in metrics if k.startswith("actor/mapo/")]:
            metrics[key.removeprefix("actor/")] = metrics.pop(key)
        return batch

    def _content_word_gate(self, data: TensorDict, metrics: dict) -> torch.Tensor | None:
        gate_config = self.mapo.pos_gate
        if not gate_config.enable:
            return None
        if self._pos_gate is None:
            self._pos_gate = PartOfSpeechGate(self.tokenizer, gate_config.tags, gate_config.tagger,
                                              empty_fallback=gate_config.empty_fallback)
        gate, fell_back = self._pos_gate.gate_and_fallbacks(data["responses"], data["response_mask"])
        metrics["mapo/pos_fallback_frac"] = float(fell_back.float().mean()) if len(fell_back) else 0.0
        return gate
