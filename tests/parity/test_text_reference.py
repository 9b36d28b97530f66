"""The release's external text-only reference model (``text_ref_model``): the key, the launch and worker
checks that it can read the actor's token ids, and the model section its engine is built from.

The main_ppo runs with a text reference are in ``test_text_reference_e2e.py``.
"""

import pytest
from omegaconf import OmegaConf

from mapo_verl.config import MAPOConfig
from mapo_verl.demo.data import corpus
from mapo_verl.demo.model import build_tokenizer, omni_processor, thinker_config
from mapo_verl.verl_ext.text_reference import (
    TEXT_REF_KEY,
    build_text_reference,
    text_reference_mismatch,
    text_reference_model_section,
)
from mapo_verl.verl_ext.validation import check_mapo_config
from tests.parity.launch import launch_config

KEY = r"actor_rollout_ref\.actor\.policy_loss\.mapo\.text_ref_model"


def test_unset_by_default_as_the_release():
    assert MAPOConfig().text_ref_model is None
    assert MAPOConfig(text_ref_model="/models/text").text_ref_model == "/models/text"


@pytest.mark.parametrize("overrides, key", [
    ({"text_ref_model": ""}, "mapo.text_ref_model"),
    ({"text_ref_model": 3}, "mapo.text_ref_model"),
    ({"text_ref_model": "/models/text", "ablation_reference": "policy"}, "mapo.ablation_reference"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MAPOConfig(**overrides)


# --- what the text reference must share with the actor ------------------------------------


@pytest.fixture(scope="module")
def tokenizers():
    """The demo's tokenizer, and one trained on other text (same special tokens, other ids)."""
    words = corpus()
    actor = build_tokenizer(words)
    return actor, build_tokenizer(words + [line.upper() for line in words], vocab_size=len(actor))


def save_config_and_tokenizer(path, tokenizer, vocab_size=None):
    """An HF model directory without weights: what the launch check and the worker's check read."""
    config = thinker_config(tokenizer)
    if vocab_size is not None:
        config.text_config.vocab_size = vocab_size
    config.save_pretrained(path)
    omni_processor(tokenizer).save_pretrained(path)
    return str(path)


def test_same_tokenizer_and_config_match(tokenizers):
    tokenizer = tokenizers[0]
    config = thinker_config(tokenizer)
    assert text_reference_mismatch(config, tokenizer, thinker_config(tokenizer), tokenizer) is None


def test_a_full_omni_checkpoint_matches_its_thinker_alone(tokenizers):
    """The actor trains a full Omni checkpoint's thinker: a thinker-only text reference reads its ids."""
    from transformers import Qwen2_5OmniConfig

    tokenizer = tokenizers[0]
    thinker = thinker_config(tokenizer)
    full = Qwen2_5OmniConfig(thinker_config=thinker.to_dict())
    assert text_reference_mismatch(full, tokenizer, thinker, tokenizer) is None
    bigger = thinker_config(tokenizer)
    bigger.text_config.vocab_size += 8
    assert "vocab_size is" in text_reference_mismatch(full, tokenizer, bigger, tokenizer)


def test_another_tokenizer_of_the_same_size_is_a_mismatch(tokenizers):
    actor, other = tokenizers
    assert len(actor) == len(other) and actor.get_vocab() != other.get_vocab()  # the release's size check passes
    reason = text_reference_mismatch(thinker_config(actor), actor, thinker_config(other), other)
    assert reason is not None and "its tokenizer maps" in reason


def test_vocab_size_and_model_type_mismatches_are_named(tokenizers):
    from transformers import Qwen2AudioConfig

    tokenizer = tokenizers[0]
    bigger = thinker_config(tokenizer)
    bigger.text_config.vocab_size += 8
    assert "vocab_size is" in text_reference_mismatch(thinker_config(tokenizer), tokenizer, bigger, tokenizer)
    audio = Qwen2AudioConfig(text_config={"model_type": "qwen2", "vocab_size": len(tokenizer)})
    assert "model_type is 'qwen2_audio'" in text_reference_mismatch(thinker_config(tokenizer), tokenizer, audio,
                                                                     tokenizer)


def text_ref_launch_config(actor_path, text_path):
    config = launch_config(mapo={"attention": {"coef": 0.0}, "text_ref_model": text_path})
    config.actor_rollout_ref.model.path = actor_path
    return config


def test_launch_check_refuses_a_text_reference_with_another_tokenizer(tmp_path, tokenizers):
    actor = save_config_and_tokenizer(tmp_path / "actor", tokenizers[0])
    with pytest.raises(ValueError, match=KEY + r".*its tokenizer maps"):
        check_mapo_config(text_ref_launch_config(actor, save_config_and_tokenizer(tmp_path / "other", tokenizers[1])))
    with pytest.raises(ValueError, match=KEY + r".*vocab_size is"):
        check_mapo_config(text_ref_launch_config(actor, save_config_and_tokenizer(
            tmp_path / "wide", tokenizers[0], vocab_size=len(tokenizers[0]) + 8)))
    check_mapo_config(text_ref_launch_config(actor, save_config_and_tokenizer(tmp_path / "same", tokenizers[0])))
    # a path that is not on this machine is left to the worker that loads it
    check_mapo_config(text_ref_launch_config(actor, "hdfs://models/text_ref"))


def test_worker_refuses_a_mismatched_text_reference_before_building_an_engine(tmp_path, tokenizers):
    actor = save_config_and_tokenizer(tmp_path / "actor", tokenizers[0])
    other = save_config_and_tokenizer(tmp_path / "other", tokenizers[1])
    section = OmegaConf.create({"model": {"_target_": "verl.workers.config.HFModelConfig", "path": actor,
                                          "override_config": {"attn_implementation": "sdpa"}}})

    def no_engine(**_):
        raise AssertionError("the engine must not be built for a mismatched text reference")

    with pytest.raises(ValueError, match=KEY + r".*its tokenizer maps"):
        build_text_reference(section, other, no_engine)


def test_model_section_takes_the_path_and_drops_lora_and_the_actor_tokenizer():
    model = OmegaConf.create({"path": "/actor", "tokenizer_path": "/actor_tok", "hf_config_path": "/actor_cfg",
                              "lora_rank": 64, "lora_adapter_path": "/adapter", "lora": {"rank": 32, "alpha": 64},
                              "use_remove_padding": True, "override_config": {"attn_implementation": "sdpa"}})
    section = text_reference_model_section(model, "/text_ref")
    assert section.path == "/text_ref"
    assert section.tokenizer_path is None and section.hf_config_path is None  # read from /text_ref
    assert section.lora_rank == 0 and section.lora.rank == 0 and section.lora_adapter_path is None
    assert section.use_remove_padding is True and section.override_config.attn_implementation == "sdpa"
    assert model.path == "/actor" and model.lora_rank == 64  # the actor's section is untouched
    assert TEXT_REF_KEY.endswith("mapo.text_ref_model")
