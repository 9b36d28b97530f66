"""The audio-ablated pass on tiny random Omni thinkers (Qwen2.5-Omni, Qwen3-Omni-MoE; real HF classes, real
processors built offline, the model class veRL's FSDP engine loads).

Entropies are computed as veRL's engine does (``entropy_from_logits`` at the rollout
temperature, left-shifted like log-probs). Checked: the ablated entropies differ from the
policy's only through the audio (identical before the first audio placeholder, and for a
sample without audio), every mode gives aligned tensors, and a mixed batch goes Δh → ω̃ →
advantages through veRL's own ``compute_advantage``.
"""

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils import tensordict_utils as tu
from verl.utils.torch_functional import entropy_from_logits

from mapo_verl.modalities import AUDIO, ablate_audio, has_modality, placeholder_token_id
from mapo_verl.config import MAPOConfig
from mapo_verl.core import fold_relevance_into_advantages
from mapo_verl.core.contract import ABLATION_MODES, ABLATION_SEED_KEY, HAS_AUDIO_FIELD
from mapo_verl.batch_relevance import folded_advantages, relevance_for_batch
from mapo_verl.verl_ext.worker import ablate_batch
from tests.trainer.audio_models_testlib import save_tiny_omni, save_tiny_qwen3_omni, tone_clip

TEMPERATURE = 0.7
RESPONSE = 12


@pytest.fixture(scope="module", params=["qwen2_5_omni", "qwen3_omni_moe"])
def thinker(request, tmp_path_factory):
    from transformers import AutoConfig
    from verl.utils.model import get_hf_auto_model_class
    from verl.utils.tokenizer import hf_processor

    save = {"qwen2_5_omni": save_tiny_omni, "qwen3_omni_moe": save_tiny_qwen3_omni}[request.param]
    path = save(tmp_path_factory.mktemp(request.param))
    model = get_hf_auto_model_class(AutoConfig.from_pretrained(path)).from_pretrained(path).eval()
    assert model.config.model_type == f"{request.param}_thinker"
    return model, hf_processor(str(path))


def sample(processor, clip=None, question="How many beeps?"):
    """(input_ids [1, S] = prompt + a fixed response, multi_modal_inputs) as the agent loop stores them."""
    content = ([{"type": "audio", "audio": clip}] if clip is not None else []) + [{"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    audio = [clip] if clip is not None else None
    inputs = processor(text=[text], audio=audio, sampling_rate=16000, return_tensors="pt")
    response = processor.tokenizer(" two beeps, the answer is B", return_tensors="pt")["input_ids"][:, :RESPONSE]
    ids = torch.cat([inputs["input_ids"], response], dim=-1)
    mm = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    return ids, mm


def response_entropy(model, ids, mm):
    """Entropy of the distribution that generated each response token (veRL's alignment), [T]."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **mm).logits / TEMPERATURE
    entropy = entropy_from_logits(logits[0])
    return entropy[-RESPONSE - 1:-1], entropy


@pytest.mark.parametrize("mode", ABLATION_MODES)
def test_ablated_entropies_differ_only_through_the_audio(thinker, mode):
    model, processor = thinker
    ids, mm = sample(processor, tone_clip(1.0, 660.0))
    assert has_modality(mm, AUDIO)
    policy, policy_all = response_entropy(model, ids, mm)
    ablated_mm = ablate_audio(mm, mode, generator=torch.Generator().manual_seed(0))
    ablated, ablated_all = response_entropy(model, ids, ablated_mm)
    assert ablated.shape == policy.shape == (RESPONSE,)
    first_audio = int((ids[0] == placeholder_token_id(model, AUDIO)).nonzero()[0])
    # causal: positions before the audio cannot see it, so nothing else differs
    assert torch.equal(policy_all[:first_audio], ablated_all[:first_audio])
    assert (policy - ablated).abs().max() > 1e-6  # the response depends on the audio


def test_a_sample_without_audio_is_untouched(thinker):
    model, processor = thinker
    ids, mm = sample(processor, None, question="Is two more than one?")
    assert not has_modality(mm, AUDIO)
    for mode in ABLATION_MODES:
        assert torch.equal(response_entropy(model, ids, ablate_audio(mm, mode))[0], response_entropy(model, ids, mm)[0])


def test_worker_ablates_a_mixed_batch_in_place(thinker):
    _, processor = thinker
    samples = [sample(processor, tone_clip(0.5))[1], sample(processor, None)[1], sample(processor, tone_clip(1.5))[1]]
    data = TensorDict({"input_ids": torch.zeros(3, 4, dtype=torch.long)}, batch_size=[3])
    tu.assign_non_tensor_stack(data, "multi_modal_inputs", samples)
    tu.assign_non_tensor(data, **{ABLATION_SEED_KEY: 3})
    flags = ablate_batch(data, MAPOConfig(ablation="zero"))  # static settings: the worker's own config
    assert flags.tolist() == [1, 0, 1]
    assert ABLATION_SEED_KEY not in data.keys() and HAS_AUDIO_FIELD not in data.keys()
    ablated = tu.get(data, "multi_modal_inputs")
    assert ablated[0]["input_features"].abs().sum() == 0 and ablated[2]["input_features"].abs().sum() == 0
    assert torch.equal(ablated[0]["feature_attention_mask"], samples[0]["feature_attention_mask"])
    with pytest.raises(ValueError, match=f"needs '{ABLATION_SEED_KEY}'"):
        ablate_batch(data, MAPOConfig())


def test_mixed_batch_delta_h_to_advantages_through_verl(thinker):
    """Two audio samples and one text-only sample of one GRPO group: ω̃ from the model's entropies."""
    model, processor = thinker
    rows = [sample(processor, tone_clip(1.0)), sample(processor, None), sample(processor, tone_clip(1.2, 880.0))]
    h_pol = torch.stack([response_entropy(model, ids, mm)[0] for ids, mm in rows])
    h_abl = torch.stack([response_entropy(model, ids, ablate_audio(mm, "drop"))[0] for ids, mm in rows])
    mask = torch.ones(3, RESPONSE)
    has_audio_rows = torch.tensor([has_modality(mm, AUDIO) for _, mm in rows])
    relevance = relevance_for_batch(h_pol, h_abl, mask, has_audio_rows, MAPOConfig())
    assert torch.equal(relevance.omega[1], torch.ones(RESPONSE))  # no audio: ω̃ ≡ 1
    assert relevance.delta_h[1].abs().max() == 0 and relevance.delta_h[0].abs().max() > 0

    rewards = torch.zeros(3, RESPONSE)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 0.0])
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": np.array(["g", "g", "g"], dtype=object)})
    # the MAPO trainer: veRL's GRPO step, then ω̃ folded into the advantages it wrote
    verl_grpo = compute_advantage(data, adv_estimator="grpo").batch["advantages"]
    advantages = folded_advantages(relevance, verl_grpo, mask, "seq-mean-token-mean")
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, index=np.array(["g", "g", "g"], dtype=object))
    assert torch.equal(advantages[1], grpo[1])
    torch.testing.assert_close(advantages, fold_relevance_into_advantages(grpo, relevance.omega, mask))
    # per sequence, the weights keep the mean advantage: Σ_t A'_t = Σ_t A_t
    torch.testing.assert_close(advantages.sum(-1), grpo.sum(-1), rtol=1e-5, atol=1e-6)
