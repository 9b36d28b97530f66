"""Rollout-time faults without main_ppo: the StopIteration hang, errors naming the row, the failure policy,
the metrics the trainer logs, and the metrics history kept across a resume."""

from __future__ import annotations

import asyncio
import json
import types

import numpy as np
import pytest


def _executor_result(function, timeout: float = 2.0):
    async def run():
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, function), timeout)

    return asyncio.run(run())


def test_stop_iteration_in_an_executor_hangs_unless_converted():
    from mapo_verl.patches.agent_loop import _no_stop_iteration

    def exhausted():
        return next(iter([]))

    # the mechanism of the hang: asyncio cannot set StopIteration on a future, the await never returns
    with pytest.raises(asyncio.TimeoutError):
        _executor_result(exhausted)
    with pytest.raises(RuntimeError, match="StopIteration"):
        _executor_result(_no_stop_iteration(exhausted))


def test_the_omni_processor_raises_stop_iteration_on_a_stray_placeholder(tokenizer_and_processor):
    """The bad input of the hang: one clip, two <|AUDIO|> tokens in the text (one of them in the question)."""
    from mapo_verl.patches.agent_loop import _no_stop_iteration

    _, processor = tokenizer_and_processor
    text = "<|audio_bos|><|AUDIO|><|audio_eos|>How many <|AUDIO|> beeps?"
    clip = np.zeros(8000, dtype=np.float32)
    with pytest.raises(StopIteration):
        processor(text=[text], audio=[clip], sampling_rate=16000)
    with pytest.raises(RuntimeError, match="more placeholder tokens"):
        _no_stop_iteration(processor)(text=[text], audio=[clip], sampling_rate=16000)


def test_a_failing_trajectory_names_its_row():
    from mapo_verl.patches.agent_loop import _wrap_run_agent_loop
    from mapo_verl.patches.faults import RolloutSampleError

    async def original(self, sampling_params, trajectory, **kwargs):
        raise ValueError("Multimodal prompt produced 120 tokens")

    worker = types.SimpleNamespace(rollout_config=types.SimpleNamespace(repetition_penalty=1.0))
    run = _wrap_run_agent_loop(original)
    with pytest.raises(RolloutSampleError) as caught:
        asyncio.run(run(worker, {}, {"validate": False}, uid="u-1", index=7, data_source="tones"))
    message = str(caught.value)
    assert "uid=u-1" in message and "index=7" in message and "ValueError: Multimodal prompt produced" in message


def _policy(**section):
    from omegaconf import OmegaConf

    from mapo_verl.patches.faults import RolloutFailurePolicy

    return RolloutFailurePolicy.from_config(OmegaConf.create({"trainer": {"rollout_failures": section}}))


def test_default_policy_fails_the_run_naming_the_row():
    from mapo_verl.patches.faults import RolloutFailureError

    policy = _policy()
    policy.observe("train", {"a", "b"}, set(), {})
    with pytest.raises(RolloutFailureError) as caught:
        policy.observe("train", {"a", "b"}, {"b"}, {"b": "sample uid=b, index=3: RuntimeError: boom"})
    assert "index=3" in str(caught.value) and "tolerate=false" in str(caught.value)


def test_tolerated_failures_are_counted_until_the_fraction_is_exceeded():
    from mapo_verl.patches.faults import RolloutFailureError

    policy = _policy(tolerate=True, max_fraction=0.25)
    uids = {f"u{i}" for i in range(8)}
    policy.observe("train", uids, {"u1"}, {"u1": "sample index=1: boom"})
    policy.observe("train", uids, {"u1"}, {})  # the same failure seen again is not counted twice
    assert policy.metrics() == {"mapo/rollout_failures": 1.0, "mapo/rollout_failures_total": 1.0,
                                "mapo/rollout_failure_frac": 1 / 8}
    policy.observe("train", uids, {"u1", "u2"}, {"u2": "sample index=2: boom"})
    assert policy.metrics()["mapo/rollout_failures"] == 1.0  # per step
    with pytest.raises(RolloutFailureError, match=r"3 of 8 train prompts failed \(37.5% > .*max_fraction=0.25\)"):
        policy.observe("train", uids, {"u1", "u2", "u3"}, {"u3": "sample index=3: boom"})


@pytest.mark.parametrize("section, key", [({"tolerate": "yes"}, "tolerate"), ({"max_fraction": 2}, "max_fraction"),
                                          ({"max_frac": 0.1}, "trainer.rollout_failures")])
def test_failure_policy_settings_name_the_key(section, key):
    with pytest.raises(ValueError, match=key):
        _policy(**section)


def test_trainer_metrics_carry_bad_rows_and_rollout_failures():
    from mapo_verl.patches.faults import _wrap_compute_metrics

    seen = {}

    def original(self, batch, metrics, *args, **kwargs):
        seen.update(metrics)

    trainer = types.SimpleNamespace(replay_buffer=types.SimpleNamespace(mapo_failure_policy=_policy()),
                                    train_dataset=types.SimpleNamespace(row_check_counts={"bad_rows": 3,
                                                                                          "truncated_clips": 1}))
    _wrap_compute_metrics(original)(trainer, None, {"actor/pg_loss": 0.5})
    assert seen["mapo/bad_rows"] == 3.0 and seen["mapo/truncated_clips"] == 1.0
    assert seen["mapo/rollout_failures"] == 0.0 and seen["actor/pg_loss"] == 0.5


def _record(step: int) -> bytes:
    return json.dumps({"step": step, "data": {"mapo/omega_mean": float(step)}}).encode() + b"\n"


def test_file_logger_keeps_history_on_resume(tmp_path, monkeypatch):
    import verl  # noqa: F401  (the MAPO plugin patches veRL's file logger)
    from verl.utils.tracking import FileLogger

    from mapo_verl.patches import faults

    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    path.write_bytes(_record(1) + _record(2) + _record(3) + b'{"step": 4, "da')  # killed while writing step 4
    monkeypatch.setattr(faults, "_resumed_step", [2])  # resumed from the step-2 checkpoint
    logger = FileLogger("p", "e")
    logger.log({"mapo/omega_mean": 30.0}, step=3)
    logger.finish()
    steps = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["data"]["mapo/omega_mean"]) for r in steps] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert not hasattr(__import__("verl.utils.tracking", fromlist=["x"]), "open")  # the shim is gone

    monkeypatch.setattr(faults, "_resumed_step", [None])  # a fresh run starts a fresh file, as veRL does
    FileLogger("p", "e").finish()
    assert path.read_text() == ""
