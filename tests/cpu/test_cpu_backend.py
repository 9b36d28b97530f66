"""The CPU backend (mapo_verl.cpu): platform, process-group string, HF rollout server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
import torch

import verl  # noqa: F401  (loads the plugin)
from mapo_verl.cpu.distributed import dedupe_backend
from tests.trainer.audio_models_testlib import save_tiny_omni, tone_clip


def test_dedupe_backend_only_collapses_repeated_entries():
    assert dedupe_backend("cpu:gloo,cpu:gloo") == "cpu:gloo"
    assert dedupe_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    assert dedupe_backend("gloo") == "gloo"
    assert dedupe_backend(None) is None


_PLATFORM_PROBE = r"""
import json, os
import verl
from verl.utils import device
from verl.utils.distributed import initialize_global_process_group_ray
from verl.workers.engine import EngineRegistry
import torch, torch.distributed as dist
initialize_global_process_group_ray()  # veRL's default backend string on this platform
module = device.get_torch_device()
print(json.dumps({
    "device": device.get_device_name(),
    "device_id": device.get_device_id(),
    "backend": dist.get_backend(),
    "ray_resource": device.get_resource_name(),
    "rss_positive": module.max_memory_allocated() > 0,
    "tensor_device": str(torch.zeros(1).to(device.get_device_id()).device),
    "engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
}))
"""


def test_platform_in_a_fresh_process():
    env = dict(os.environ, VERL_PLATFORM="cpu", RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29651")
    env.pop("VERL_ENGINE_DEVICE", None)
    result = subprocess.run(
        [sys.executable, "-c", _PLATFORM_PROBE], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe == {
        "device": "cpu",
        "device_id": "cpu",
        "backend": "cpu:gloo",
        "ray_resource": "GPU",
        "rss_positive": True,
        "tensor_device": "cpu",
        "engine": "FSDPEngineWithLMHead",
    }


def test_without_the_switch_nothing_is_activated():
    import mapo_verl.cpu as cpu

    if os.environ.get("VERL_PLATFORM", "").lower() == "cpu":
        pytest.skip("this session runs with VERL_PLATFORM=cpu")
    from verl.plugin.platform import PlatformRegistry

    assert not cpu._registered
    assert "cpu" not in PlatformRegistry.registered_names()
    assert not hasattr(torch.distributed.init_process_group, "__mapo_original__")


# ---- HF rollout server (its methods, in-process; the Ray wiring runs in tests/e2e) -----------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from omegaconf import OmegaConf
    from verl.workers.config import RolloutConfig

    from mapo_verl.cpu.rollout import HFRolloutServer

    model_dir = save_tiny_omni(tmp_path_factory.mktemp("omni"))
    model_config = OmegaConf.create(
        {
            "_target_": "verl.workers.config.HFModelConfig",
            "path": str(model_dir),
            "override_config": {"attn_implementation": "sdpa"},
        }
    )
    config = RolloutConfig(name="hf", prompt_length=96, response_length=8, tensor_model_parallel_size=1)
    return HFRolloutServer(config=config, model_config=model_config, replica_rank=0)


def _audio_prompt(server, clip):
    """Prompt token ids and the processor's audio features for one clip."""
    processor = server.processor
    content = [{"type": "audio", "audio": clip}, {"type": "text", "text": "How many beeps?"}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[clip], sampling_rate=16000, return_tensors="pt")
    return inputs["input_ids"][0].tolist(), inputs


def _generate(server, prompt_ids, clip, **sampling):
    params = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True, **sampling}
    return asyncio.run(
        server.generate(prompt_ids=list(prompt_ids), sampling_params=params, request_id="r1", audio_data=[clip])
    )


def test_generates_from_audio_with_actor_style_log_probs(server):
    clip = tone_clip(0.8)
    prompt_ids, features = _audio_prompt(server, clip)
    output = _generate(server, prompt_ids, clip)
    assert 1 <= len(output.token_ids) <= 8 and len(output.log_probs) == len(output.token_ids)
    # reference: the model's own forward on prompt + response, softmax over the full vocabulary
    ids = torch.tensor([list(prompt_ids) + output.token_ids])
    with torch.no_grad():
        logits = server.model(
            input_ids=ids, input_features=features["input_features"],
            feature_attention_mask=features["feature_attention_mask"],
        ).logits[0]
    reference = torch.log_softmax(logits[len(prompt_ids) - 1 : -1].double(), dim=-1)
    reference = reference.gather(1, torch.tensor(output.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(output.log_probs, dtype=torch.float64), reference, atol=1e-4)
    assert output.token_ids[0] == int(logits[len(prompt_ids) - 1].argmax())  # greedy


def test_never_samples_placeholder_tokens(server):
    clip = tone_clip(0.8)
    prompt_ids, _ = _audio_prompt(server, clip)
    audio_token = server.tokenizer.convert_tokens_to_ids(server.processor.audio_token)
    lm_head = server.model.lm_head.weight
    saved = lm_head.detach().clone()
    try:
        with torch.no_grad():
            lm_head[audio_token] += 100.0 * lm_head.norm(dim=1).max()  # the audio token would win everywhere
        output = _generate(server, prompt_ids, clip, temperature=1.0)
    finally:
        with torch.no_grad():
            lm_head.copy_(saved)
    assert audio_token not in output.token_ids


def test_rejects_audio_that_does_not_match_the_prompt(server):
    from mapo_verl.patches.audio_models import AudioPlaceholderMismatchError

    prompt_ids, _ = _audio_prompt(server, tone_clip(0.5))
    with pytest.raises(AudioPlaceholderMismatchError, match="rollout request r1"):
        _generate(server, prompt_ids, tone_clip(1.5))


def test_weight_sync_is_strict_and_changes_what_is_served(server):
    clip = tone_clip(0.8)
    prompt_ids, _ = _audio_prompt(server, clip)
    before = _generate(server, prompt_ids, clip).log_probs
    current = {name: tensor.detach().clone() for name, tensor in server._params.items()}

    with pytest.raises(KeyError, match="does not have"):
        asyncio.run(server.load_weights([("not.a.weight", torch.zeros(1))]))
    asyncio.run(server.load_weights([("lm_head.weight", current["lm_head.weight"])]))
    with pytest.raises(RuntimeError, match="did not send"):
        asyncio.run(server.finish_weight_update(global_steps=1))

    torch.manual_seed(1)
    new = {name: tensor + 0.05 * torch.randn_like(tensor) if tensor.is_floating_point() else tensor
           for name, tensor in current.items()}
    asyncio.run(server.load_weights(list(new.items())))
    checksum = asyncio.run(server.finish_weight_update(global_steps=3))
    assert checksum == pytest.approx(float(sum(t.double().sum() for t in new.values())), rel=1e-12)
    after = _generate(server, prompt_ids, clip)
    assert after.extra_fields["global_steps"] == 3
    assert after.log_probs != before
    for name, tensor in new.items():
        assert torch.equal(server._params[name].detach(), tensor)
