"""veRL 0.9.1 adaptations for audio-language models (mapo_verl.patches), on tiny random models.

Each test shows the veRL behaviour the patch replaces (through the original function kept as
``__mapo_original__``) and checks the patched result against an independent reference:
the processor's own output, the thinker's own ``get_rope_index`` or explicit arithmetic.
"""

from __future__ import annotations

import asyncio
import math
import types

import pytest
import torch

import verl  # noqa: F401  (loads the plugin: patches applied)
from mapo_verl.patches import UnsupportedVerlVersionError, require_tested_verl
from mapo_verl.patches.agent_loop import _wrap_run_agent_loop
from mapo_verl.patches.audio_models import (
    AudioPlaceholderMismatchError,
    audio_family,
    audio_processor_inputs,
    check_audio_placeholders,
)
from tests.trainer.audio_models_testlib import save_tiny_omni, save_tiny_qwen2_audio, save_tiny_qwen3_omni, tone_clip


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_models")
    return {"omni": save_tiny_omni(root / "omni"), "qwen2_audio": save_tiny_qwen2_audio(root / "qwen2_audio"),
            "qwen3_omni": save_tiny_qwen3_omni(root / "qwen3_omni")}


@pytest.fixture(scope="module")
def processors(model_dirs):
    from verl.utils.tokenizer import hf_processor

    return {name: hf_processor(str(path)) for name, path in model_dirs.items()}


def _prompt_inputs(processor, clips, question="How many beeps?"):
    content = [{"type": "audio", "audio": clip} for clip in clips] + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], audio=list(clips), sampling_rate=16000, return_tensors="pt")


def _audio_token_id(processor):
    return processor.tokenizer.convert_tokens_to_ids(processor.audio_token)


def _expected_tokens(name: str, frames: int) -> int:
    if name == "qwen3_omni":
        # three stride-2 convolutions (kernel 3, padding 1: ceil(n / 2)) on every 100-frame chunk, written out
        chunks = [100] * (frames // 100) + ([frames % 100] if frames % 100 else [])
        return sum(math.ceil(math.ceil(math.ceil(n / 2) / 2) / 2) for n in chunks)
    # two stride-2 reductions of the Whisper-style encoders (conv, then pooling), written out
    after_conv = (frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


# ---- hf_processor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, processor_class, has_rope_index",
    [("omni", "Qwen2_5OmniProcessor", True), ("qwen2_audio", "Qwen2AudioProcessor", False),
     ("qwen3_omni", "Qwen3OmniMoeProcessor", True)],
)
def test_hf_processor_loads_audio_processors_that_verl_rejects(
    model_dirs, processors, name, processor_class, has_rope_index
):
    from verl.utils.tokenizer import hf_processor

    with pytest.warns(UserWarning, match="Failed to create processor"):
        assert hf_processor.__mapo_original__(str(model_dirs[name])) is None  # veRL 0.9.1 alone
    processor = processors[name]
    assert type(processor).__name__ == processor_class
    assert processor.config.model_type == {"omni": "qwen2_5_omni_thinker", "qwen2_audio": "qwen2_audio",
                                           "qwen3_omni": "qwen3_omni_moe_thinker"}[name]
    assert hasattr(processor, "get_rope_index") == has_rope_index


def test_hf_processor_leaves_other_models_to_verl(tmp_path, monkeypatch):
    from transformers import Qwen2Config
    from verl.utils.tokenizer import hf_processor

    from mapo_verl.patches import processors as patch

    def must_not_run(*args, **kwargs):
        raise AssertionError("a text-only model must not take the audio path")

    monkeypatch.setattr(patch, "load_audio_processor", must_not_run)
    Qwen2Config(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    assert hf_processor(str(tmp_path)) == hf_processor.__mapo_original__(str(tmp_path))


@pytest.mark.parametrize("name", ["omni", "qwen3_omni"])
def test_omni_rope_index_audio_only_is_sequential(processors, name):
    """With audio alone, every mRoPE row counts tokens 0..n-1 (audio positions are consecutive)."""
    processor = processors[name]
    inputs = _prompt_inputs(processor, [tone_clip(0.9)])
    kwargs = processor.get_rope_index_kwargs(dict(inputs))
    assert torch.equal(kwargs["audio_seqlens"], inputs["feature_attention_mask"].sum(-1))
    positions, _ = processor.get_rope_index(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], image_grid_thw=None,
        video_grid_thw=None, **kwargs,
    )
    n = inputs["input_ids"].shape[1]
    assert positions.shape == (3, 1, n)
    assert torch.equal(positions, torch.arange(n).expand(3, 1, n))


@pytest.mark.parametrize("name", ["omni", "qwen3_omni"])
def test_omni_rope_index_with_image_matches_the_thinker(model_dirs, processors, name):
    """Audio + image: the processor-bound index equals the thinker model's own ``get_rope_index``."""
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForMultimodalLM

    processor = processors[name]
    image = Image.fromarray((np.random.default_rng(0).random((56, 56, 3)) * 255).astype("uint8"))
    text = (
        "<|im_start|>user\n<|vision_bos|><|IMAGE|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        "Is it loud?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[text], images=[image], audio=[tone_clip(0.7)], sampling_rate=16000, return_tensors="pt")
    model = AutoModelForMultimodalLM.from_pretrained(model_dirs[name])
    expected, _ = model.get_rope_index(
        inputs["input_ids"], inputs["image_grid_thw"], None, inputs["attention_mask"], False,
        inputs["feature_attention_mask"].sum(-1),
    )
    got, _ = processor.get_rope_index(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
        image_grid_thw=inputs["image_grid_thw"], video_grid_thw=None, **processor.get_rope_index_kwargs(dict(inputs)),
    )
    assert torch.equal(got, expected)
    assert not torch.equal(got[0], got[1])  # the image really makes the rows differ


# ---- audio features and the placeholder check -----------------------------------------------


@pytest.mark.parametrize("name", ["omni", "qwen2_audio", "qwen3_omni"])
def test_audio_processor_inputs_equal_the_processor_on_a_real_prompt(processors, name):
    processor = processors[name]
    clips = [tone_clip(0.6), tone_clip(1.3, 660.0)]
    reference = _prompt_inputs(processor, clips)
    got = audio_processor_inputs(processor, clips, {"sampling_rate": 16000})
    for key in ("input_features", "feature_attention_mask"):
        assert torch.equal(got[key], reference[key])


@pytest.mark.parametrize("name", ["omni", "qwen2_audio", "qwen3_omni"])
def test_placeholder_check_accepts_matching_and_names_the_sample_on_mismatch(processors, name):
    processor = processors[name]
    family = audio_family(processor.config.model_type)
    clips = [tone_clip(0.6), tone_clip(1.3)]
    inputs = _prompt_inputs(processor, clips)
    ids, mask = inputs["input_ids"][0], inputs["feature_attention_mask"]
    token = _audio_token_id(processor)
    expected = sum(_expected_tokens(name, int(frames)) for frames in mask.sum(-1))
    assert int((ids == token).sum()) == expected  # the processor expands by the same rule

    check_audio_placeholders(ids, mask, audio_token_id=token, family=family, sample="sample index=3")

    first = int((ids == token).nonzero()[0])
    one_short = torch.cat([ids[:first], ids[first + 1 :]])
    with pytest.raises(AudioPlaceholderMismatchError, match=rf"sample index=3: {expected - 1} audio placeholder"):
        check_audio_placeholders(one_short, mask, audio_token_id=token, family=family, sample="sample index=3")
    with pytest.raises(AudioPlaceholderMismatchError, match="response contains 1 audio placeholder"):
        check_audio_placeholders(
            torch.cat([ids, torch.tensor([token])]), mask, audio_token_id=token, family=family,
            sample="sample index=3", response_ids=[token],
        )


@pytest.mark.parametrize("name", ["omni", "qwen3_omni"])
def test_the_omni_thinker_itself_does_not_check_counts(model_dirs, processors, name):
    """Why the check exists: fewer placeholders than audio features runs silently in the thinker."""
    from transformers import AutoModelForMultimodalLM

    processor = processors[name]
    model = AutoModelForMultimodalLM.from_pretrained(model_dirs[name]).eval()
    inputs = _prompt_inputs(processor, [tone_clip(1.0)])
    token = _audio_token_id(processor)
    ids = inputs["input_ids"]
    keep = torch.ones_like(ids[0], dtype=torch.bool)
    keep[int((ids[0] == token).nonzero()[0])] = False
    with torch.no_grad():
        model(
            input_ids=ids[:, keep], attention_mask=inputs["attention_mask"][:, keep],
            input_features=inputs["input_features"], feature_attention_mask=inputs["feature_attention_mask"],
        )
    with pytest.raises(AudioPlaceholderMismatchError):
        check_audio_placeholders(
            ids[0, keep], inputs["feature_attention_mask"], audio_token_id=token,
            family=audio_family(model.config.model_type), sample="sample 0",
        )


@pytest.mark.parametrize("name", ["omni", "qwen3_omni"])
def test_the_audio_encoder_fills_exactly_the_placeholders_of_the_family_rule(model_dirs, processors, name):
    """The encoder's real output rows per clip = the processor's placeholders = the family's length rule
    (Qwen3-Omni: across a 100-frame chunk boundary too)."""
    from transformers import AutoModelForMultimodalLM

    processor = processors[name]
    model = AutoModelForMultimodalLM.from_pretrained(model_dirs[name]).eval()
    family = audio_family(model.config.model_type)
    for seconds in (0.3, 1.0, 1.3, 2.0):
        inputs = _prompt_inputs(processor, [tone_clip(seconds)])
        with torch.no_grad():
            encoded = model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
        rows = encoded.last_hidden_state.shape[0]
        assert rows == int((inputs["input_ids"] == _audio_token_id(processor)).sum()), seconds
        assert rows == int(family.output_lengths(inputs["feature_attention_mask"].sum(-1))), seconds


# ---- the agent loop's per-trajectory features ---------------------------------------------


def _agent_loop_output(processor, clips):
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    prompt_ids = _prompt_inputs(processor, clips)["input_ids"][0].tolist()
    return AgentLoopOutput(
        prompt_ids=prompt_ids, response_ids=[10, 11, 12], response_mask=[1, 1, 1],
        multi_modal_data={"audios": clips}, metrics=AgentLoopMetrics(),
    )


def _worker(processor):
    """What ``AgentLoopWorker._compute_multi_modal_inputs`` reads from ``self``."""
    return types.SimpleNamespace(
        processor=processor, tokenizer=processor.tokenizer,
        _get_mm_processor_kwargs=lambda audios: {"sampling_rate": 16000},
        rollout_config=types.SimpleNamespace(repetition_penalty=1.0),
    )


@pytest.mark.parametrize("name", ["omni", "qwen2_audio", "qwen3_omni"])
def test_agent_loop_features_equal_the_processor(processors, name):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    processor = processors[name]
    clips = [tone_clip(0.8)]
    output = _agent_loop_output(processor, clips)
    input_ids = torch.tensor([output.prompt_ids + output.response_ids])
    got = AgentLoopWorker._compute_multi_modal_inputs(_worker(processor), output, input_ids)
    reference = _prompt_inputs(processor, clips)
    assert set(got) == {"input_features", "feature_attention_mask"}
    for key in got:
        assert torch.equal(got[key], reference[key])


@pytest.mark.parametrize("name", ["omni", "qwen3_omni"])
def test_agent_loop_position_ids_are_the_thinker_rope_index(model_dirs, processors, name):
    """veRL's own ``_compute_position_ids`` with the patched processor: the text row, then the thinker's
    mRoPE rows for the same audio (Qwen3-Omni's index is float, so the [1, 4, S] tensor is float too)."""
    from transformers import AutoModelForMultimodalLM
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    processor = processors[name]
    inputs = _prompt_inputs(processor, [tone_clip(1.3)])
    mm = {key: inputs[key] for key in ("input_features", "feature_attention_mask")}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    got = AgentLoopWorker._compute_position_ids(_worker(processor), ids, mask, dict(mm))
    model = AutoModelForMultimodalLM.from_pretrained(model_dirs[name])
    rope, _ = model.get_rope_index(ids, None, None, mask, False, mm["feature_attention_mask"].sum(-1))
    assert got.shape == (1, 4, ids.shape[1]) and got.dtype == rope.dtype
    assert torch.equal(got[0, 0], torch.arange(ids.shape[1], dtype=got.dtype))
    assert torch.equal(got[0, 1:], rope[:, 0])


def test_verl_agent_loop_alone_fails_on_qwen2_audio(processors):
    """veRL re-processes the decoded prompt, whose audio tokens ``skip_special_tokens`` dropped."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    processor = processors["qwen2_audio"]
    output = _agent_loop_output(processor, [tone_clip(0.8)])
    input_ids = torch.tensor([output.prompt_ids + output.response_ids])
    original = AgentLoopWorker._compute_multi_modal_inputs.__wrapped__
    with pytest.raises(ValueError, match="audio"):
        original(_worker(processor), output, input_ids)


def test_agent_loop_mismatch_names_the_dataset_sample(processors):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    processor = processors["omni"]
    output = _agent_loop_output(processor, [tone_clip(0.8)])
    token = _audio_token_id(processor)
    first = output.prompt_ids.index(token)
    truncated = output.prompt_ids[:first] + output.prompt_ids[first + 2 :]  # two placeholders lost
    input_ids = torch.tensor([truncated + output.response_ids])

    async def run_agent_loop(self, sampling_params, trajectory, **kwargs):
        return AgentLoopWorker._compute_multi_modal_inputs(self, output, input_ids)

    wrapped = _wrap_run_agent_loop(run_agent_loop)
    coroutine = wrapped(_worker(processor), {}, {"sample_index": 0}, uid="u-1", session_id=2, index=17)
    # the agent loop's fault handling re-raises every trajectory error as RolloutSampleError naming the sample
    from mapo_verl.patches.faults import RolloutSampleError

    with pytest.raises(RolloutSampleError, match="sample uid=u-1, session_id=2, index=17") as raised:
        asyncio.run(coroutine)
    assert isinstance(raised.value.__cause__, AudioPlaceholderMismatchError)


# ---- model class, FSDP2 wrap order, 3-D position ids, version pin -----------------------------


def test_fsdp_engine_model_class_has_the_lm_head(model_dirs):
    from transformers import AutoConfig
    from verl.utils.model import get_hf_auto_model_class

    config = AutoConfig.from_pretrained(model_dirs["qwen2_audio"])
    assert get_hf_auto_model_class.__mapo_original__(config).from_config(config).__class__.__name__ == "Qwen2AudioModel"
    model = get_hf_auto_model_class(config).from_config(config)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"


@pytest.mark.parametrize("name, decoder_layer",
                         [("omni", "Qwen2_5OmniDecoderLayer"), ("qwen3_omni", "Qwen3OmniMoeThinkerTextDecoderLayer")])
def test_fsdp2_wraps_encoder_layers_before_their_encoder(model_dirs, name, decoder_layer):
    from transformers import AutoConfig, AutoModelForMultimodalLM
    from verl.utils import fsdp_utils

    model = AutoModelForMultimodalLM.from_config(AutoConfig.from_pretrained(model_dirs[name]))
    selected = fsdp_utils._select_fsdp2_wrap_targets(model, list(model._no_split_modules))
    unpatched = fsdp_utils._select_fsdp2_wrap_targets.__mapo_original__(model, list(model._no_split_modules))
    assert {id(m) for m in selected} == {id(m) for m in unpatched}
    position = {id(m): i for i, m in enumerate(selected)}
    for module in selected:
        for child in module.modules():
            if child is not module and id(child) in position:
                assert position[id(child)] < position[id(module)], "fully_shard needs inner modules first"
    assert unpatched.index(model.audio_tower) < unpatched.index(model.audio_tower.layers[0])  # veRL's order
    decoder = [m for m in selected if type(m).__name__ == decoder_layer]
    assert decoder == list(model.model.layers)  # order of unrelated modules kept


def _tq_packed_position_ids(lengths):
    """[4, seq] per sample, packed the way TransferQueue packs a field."""
    samples = [torch.arange(4 * n).reshape(4, n) for n in lengths]
    return samples, torch.nested.as_nested_tensor(samples, layout=torch.jagged)


@pytest.mark.parametrize("lengths", [[6, 6, 6], [5, 7, 6]])
def test_3d_position_ids_survive_fix_and_minibatch_split(lengths):
    from tensordict import TensorDict
    from verl.utils import tensordict_utils

    samples, packed = _tq_packed_position_ids(lengths)
    data = TensorDict({"position_ids": packed}, batch_size=[len(samples)])
    tensordict_utils.maybe_fix_3d_position_ids(data)
    selected = tensordict_utils.index_select_tensor_dict(data, torch.tensor([2, 0]))
    assert [t.tolist() for t in selected["position_ids"].unbind()] == [samples[2].tolist(), samples[0].tolist()]


def test_verl_alone_breaks_equal_length_3d_position_ids():
    from tensordict import TensorDict
    from verl.utils import tensordict_utils

    _, packed = _tq_packed_position_ids([6, 6, 6])
    data = TensorDict({"position_ids": packed}, batch_size=[3])
    tensordict_utils.maybe_fix_3d_position_ids.__mapo_original__(data)
    with pytest.raises(RuntimeError):  # offsets of the 4 rows read as token offsets
        tensordict_utils.index_select_tensor_dict(data, torch.tensor([0]))


def test_patches_refuse_an_untested_verl(monkeypatch):
    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(UnsupportedVerlVersionError, match="verl==0.9.1"):
        require_tested_verl()


def test_training_rollouts_get_the_configured_repetition_penalty():
    from mapo_verl.patches.agent_loop import with_configured_repetition_penalty

    veRL_params = {"temperature": 1.0, "top_p": 0.99, "top_k": 50, "repetition_penalty": 1.0}
    trained = with_configured_repetition_penalty(veRL_params, 1.2, validate=False)
    assert trained["repetition_penalty"] == 1.2 and trained["top_k"] == 50
    assert veRL_params["repetition_penalty"] == 1.0  # the shared dict of the other sessions is untouched
    assert with_configured_repetition_penalty(veRL_params, 1.2, validate=True) is veRL_params
    assert with_configured_repetition_penalty(veRL_params, 1.0, validate=False) is veRL_params
