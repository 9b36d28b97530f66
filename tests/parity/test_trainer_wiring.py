"""The MAPO trainer's advantage step wires the new options through (TransferQueue stubbed).

``MAPOTrainer._compute_advantage`` runs on a fake TransferQueue holding nested fields as veRL's
v1 trainer stores them; veRL's own step 3 (``compute_advantage_for_multi_trajectories`` with the
batch keys and ``adv_estimator=mapo``) stands in for the parent method. Checked: multi-output
sessions grouped as under GRPO, attention-only zeroing the PG advantages, the failure flags
written for the engines, the POS-gate fallback metric, and a missing task-reward key failing.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.protocol import DataProto
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from mapo_verl.config import MAPOConfig
from mapo_verl.core.contract import ABLATED_ENTROPY_FIELD, FAILED_FIELD, HAS_AUDIO_FIELD
from mapo_verl.verl_ext import trainer as trainer_module
from mapo_verl.verl_ext.trainer import MAPOTrainer

KEYS = ["u0_0_0", "u0_0_1", "u0_1_0", "u1_0_0", "u1_1_0"]  # session u0_0 has two outputs
LENGTHS = [3, 2, 3, 2, 3]
SCORES = [0.0, 2.0, 0.0, 1.0, 0.0]  # intermediate output u0_0_0 scores 0
ACC = [1.0, 1.0, 0.0, 1.0, 0.0]
PIECES = {1: " The", 2: " dog", 3: " runs", 4: "\n", 5: "."}


class Tokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(PIECES[i] for i in ids)


def nested(rows, dtype):
    return torch.nested.as_nested_tensor([torch.as_tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)


class Batch(SimpleNamespace):
    """veRL's KVBatchMeta as far as the trainer uses it: keys, partition and length."""

    def __len__(self):
        return len(self.keys)


class FakeTransferQueue:
    def __init__(self, extra_fields):
        gen = torch.Generator().manual_seed(0)
        self.store = tu.get_tensordict({
            "response_mask": nested([[1] * n for n in LENGTHS], torch.int64),
            "entropy": nested([torch.rand(n, generator=gen) for n in LENGTHS], torch.float32),
            ABLATED_ENTROPY_FIELD: nested([torch.rand(n, generator=gen) + 1 for n in LENGTHS], torch.float32),
            HAS_AUDIO_FIELD: torch.ones(len(LENGTHS), dtype=torch.int64),
            # row 4 is all function words / punctuation: its gate falls back to all ones
            "responses": nested([[1, 2, 3], [2, 4], [1, 2, 3], [2, 3], [1, 5, 5]], torch.int64),
            "rm_scores": nested([[0.0] * (n - 1) + [s] for n, s in zip(LENGTHS, SCORES)], torch.float32),
            "extra_fields": extra_fields,
        })
        self.put = None

    def kv_batch_get(self, keys, partition_id, select_fields):
        return self.store.select(*select_fields)

    def kv_batch_put(self, keys, partition_id, fields):
        self.put = fields
        return Batch(keys=keys, partition_id=partition_id)


def run_advantage_step(monkeypatch, mapo: MAPOConfig, extra_fields=None, uniform_relevance=False):
    if extra_fields is None:
        extra_fields = [{"reward_extra_info": {"acc": acc}} for acc in ACC]
    fake = FakeTransferQueue(extra_fields)
    if uniform_relevance:  # |Δh| = 0.5 on every token: ω̃ ≡ 1 and the advantages are the session GRPO's
        fake.store[ABLATED_ENTROPY_FIELD] = fake.store["entropy"] + 0.5
    monkeypatch.setattr(trainer_module, "tq", fake)

    def verl_step_3(self, batch, metrics):
        """veRL's advantage step as far as MAPO sees it: the configured estimator, written to the batch."""
        data = fake.store.select("response_mask", "rm_scores").to_padded_tensor()
        proto = DataProto.from_dict(
            tensors={"token_level_rewards": data["rm_scores"], "response_mask": data["response_mask"].float()},
            non_tensors={"uid": np.array([key.split("_")[0] for key in batch.keys], dtype=object)})
        out = compute_advantage_for_multi_trajectories(proto, batch_keys=batch.keys,
                                                       adv_estimator=self.config.algorithm.adv_estimator,
                                                       config={"norm_adv_by_std_in_grpo": True})
        fake.store["advantages"] = response_to_nested(out.batch["advantages"], fake.store["response_mask"])
        return batch

    monkeypatch.setattr(trainer_module.PPOTrainerSync, "_compute_advantage", verl_step_3)
    trainer = object.__new__(MAPOTrainer)
    trainer.mapo = mapo
    trainer.config = OmegaConf.create({"algorithm": {"adv_estimator": "mapo"},
                                       "actor_rollout_ref": {"actor": {"loss_agg_mode": "seq-mean-token-mean"}}})
    trainer.tokenizer = Tokenizer()
    trainer._pos_gate = None
    metrics = {}
    trainer._compute_advantage(Batch(keys=list(KEYS), partition_id="train"), metrics)
    return fake.put["advantages"].to_padded_tensor(0.0), fake.put, metrics


def session_grpo():
    """Final outputs u0_0_1 (2.0), u0_1_0 (0.0): ±1 / (std + 1e-6) with the unbiased std √2; u1_0_0 (1.0),
    u1_1_0 (0.0): ±0.5 / (std + 1e-6) with std √0.5."""
    value_u0, value_u1 = 1.0 / (2 ** 0.5 + 1e-6), 0.5 / (0.5 ** 0.5 + 1e-6)
    return [value_u0, value_u0, -value_u0, value_u1, -value_u1]


def test_sessions_attention_fields_and_pos_fallback(monkeypatch):
    mapo = MAPOConfig(pos_gate={"tagger": "lexicon"})
    advantages, put, metrics = run_advantage_step(monkeypatch, mapo, uniform_relevance=True)
    for row, (length, want) in enumerate(zip(LENGTHS, session_grpo())):
        assert advantages[row, :length].tolist() == pytest.approx([want] * length, rel=1e-5)
    failed = [row.tolist() for row in put[FAILED_FIELD].unbind()]
    assert failed == [[0] * 3, [0] * 2, [1] * 3, [0] * 2, [1] * 3]
    assert metrics["mapo/pos_fallback_frac"] == pytest.approx(1 / 5)


def test_attention_only_zeroes_the_pg_advantages(monkeypatch):
    mapo = MAPOConfig(attention_only=True, pos_gate={"tagger": "lexicon"})
    advantages, put, _ = run_advantage_step(monkeypatch, mapo)
    assert advantages.abs().sum() == 0
    assert any(bool(row.any()) for row in put["mapo_attn_coef"].unbind())  # the attention loss still acts


def test_a_missing_task_reward_key_stops_the_step(monkeypatch):
    extra = [{"reward_extra_info": {"format": 1.0}} for _ in KEYS]
    with pytest.raises(KeyError, match="task_reward_key='acc'"):
        run_advantage_step(monkeypatch, MAPOConfig(pos_gate={"tagger": "lexicon"}), extra)
