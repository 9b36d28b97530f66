"""Audio features per sample, and the configured repetition penalty, in veRL's agent loop.

After a rollout, veRL 0.9.1's ``AgentLoopWorker._compute_multi_modal_inputs`` recomputes
the processor features for the trajectory by decoding ``input_ids`` with
``skip_special_tokens=True`` and running the processor on that text plus the clips. The
decode drops the audio placeholders, and Qwen2-Audio's processor then rejects the call
("found 0 audio tokens but received 1 audio"). For the audio families of
:mod:`mapo_verl.patches.audio_models` the audio features are instead computed from the
clips alone (:func:`audio_processor_inputs`), other modalities still go through veRL's
code, and the sample's placeholder count is checked against the features, naming the
sample (uid, rollout session, dataset index) on mismatch.

A failing rollout names its row: the error of any trajectory is re-raised as
:class:`mapo_verl.patches.faults.RolloutSampleError` with the sample's description and, on
veRL's TransferQueue path, recorded on the prompt's tag, where the trainer's failure policy
(:mod:`mapo_verl.patches.faults`) reads it. veRL runs the prompt's tokenisation in an
executor thread; a ``StopIteration`` raised there (the Omni processors call ``next`` on
their audio lengths once per ``<|AUDIO|>`` token, so a stray placeholder in the text
raises it) cannot be set on an asyncio future, and the trajectory would wait forever. The
Continuous Token builder's methods therefore turn it into a ``RuntimeError``.

veRL 0.9.1's agent loops also send ``repetition_penalty=1.0`` to the rollout server
whatever ``actor_rollout_ref.rollout.repetition_penalty`` says; training rollouts here get
the configured value (the authors sample with 1.2), validation keeps veRL's ``val_kwargs``
behaviour.
"""

from __future__ import annotations

import contextvars
import functools
import logging

from mapo_verl.patches.audio_models import (
    audio_family_for_processor,
    audio_processor_inputs,
    check_audio_placeholders,
)
from mapo_verl.patches._hooks import wrap_methods
from mapo_verl.patches.faults import ROLLOUT_ERROR_TAG, RolloutSampleError

__all__ = ["install", "AGENT_LOOP_MODULE", "with_configured_repetition_penalty"]

_MARKER = "__mapo_audio_patched__"
# Continuous Token builder methods veRL calls through ``loop.run_in_executor``
_EXECUTOR_BUILDER_METHODS = ("build_initial_tokens", "merge_context_tokens", "merge_assistant_tokens")

AGENT_LOOP_MODULE = "verl.experimental.agent_loop.agent_loop"

_SAMPLE: contextvars.ContextVar[str] = contextvars.ContextVar("mapo_agent_loop_sample", default="sample <unknown>")


def _describe_sample(trajectory: dict, kwargs: dict) -> str:
    parts = [f"{key}={kwargs[key]}" for key in ("uid", "session_id", "index", "data_source") if key in kwargs]
    if not parts:
        parts = [f"{key}={trajectory[key]}" for key in ("sample_index", "rollout_n", "step") if key in trajectory]
    return "sample " + ", ".join(parts)


def with_configured_repetition_penalty(sampling_params: dict, penalty: float, validate: bool) -> dict:
    """``sampling_params`` with the rollout config's repetition penalty on training rollouts."""
    if validate or penalty == sampling_params.get("repetition_penalty", 1.0):
        return sampling_params
    return {**sampling_params, "repetition_penalty": penalty}


def _wrap_run_agent_loop(original):
    @functools.wraps(original)
    async def _run_agent_loop(self, sampling_params, trajectory, **kwargs):
        sampling_params = with_configured_repetition_penalty(
            sampling_params, float(self.rollout_config.repetition_penalty), bool(trajectory.get("validate", False))
        )
        sample = _describe_sample(trajectory, kwargs)
        token = _SAMPLE.set(sample)
        try:
            return await original(self, sampling_params, trajectory, **kwargs)
        except Exception as error:
            await _record_rollout_error(sample, error, trajectory, kwargs)
            raise RolloutSampleError(f"{sample}: {type(error).__name__}: {error}") from error
        finally:
            _SAMPLE.reset(token)

    return _run_agent_loop


async def _record_rollout_error(sample: str, error: Exception, trajectory: dict, kwargs: dict) -> None:
    """On veRL's TransferQueue path (a ``uid`` and a ``session_id`` per trajectory), tag the prompt with the error."""
    if "uid" not in kwargs or "session_id" not in kwargs or isinstance(error, RolloutSampleError):
        return
    import transfer_queue as tq

    partition = "val" if trajectory.get("validate", False) else "train"
    try:
        await tq.async_kv_put(key=kwargs["uid"], partition_id=partition,
                              tag={ROLLOUT_ERROR_TAG: f"{sample}: {type(error).__name__}: {error}"})
    except Exception:  # the trajectory's own error is the one to raise; the trainer then names only the uid
        logging.getLogger(__name__).exception("%s: could not record the rollout error on the prompt", sample)


def _no_stop_iteration(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except StopIteration as error:
            raise RuntimeError(
                f"{getattr(method, '__name__', type(method).__name__)} raised StopIteration: the processor found more placeholder tokens in the prompt "
                "text than inputs (a literal <|AUDIO|> / <|IMAGE|> token in the text?)"
            ) from error

    return call


def _wrap_agent_loop_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        builder = self.continuous_token_builder
        for name in _EXECUTOR_BUILDER_METHODS:
            if hasattr(builder, name):
                setattr(builder, name, _no_stop_iteration(getattr(builder, name)))

    return __init__


def _wrap_compute_multi_modal_inputs(original):
    @functools.wraps(original)
    def _compute_multi_modal_inputs(self, output, input_ids):
        multi_modal_data = output.multi_modal_data or {}
        audios = multi_modal_data.get("audios")
        family = audio_family_for_processor(self.processor)
        if not audios or family is None:
            return original(self, output, input_ids)

        others = {key: value for key, value in multi_modal_data.items() if key != "audios"}
        inputs = original(self, output.model_copy(update={"multi_modal_data": others}), input_ids) if others else {}
        mm_processor_kwargs = output.mm_processor_kwargs
        if mm_processor_kwargs is None:
            mm_processor_kwargs = self._get_mm_processor_kwargs(audios)
        inputs.update(audio_processor_inputs(self.processor, audios, mm_processor_kwargs))
        check_audio_placeholders(
            input_ids,
            inputs["feature_attention_mask"],
            audio_token_id=self.processor.tokenizer.convert_tokens_to_ids(self.processor.audio_token),
            family=family,
            sample=_SAMPLE.get(),
            response_ids=output.response_ids,
        )
        return inputs

    return _compute_multi_modal_inputs


def _patch(module) -> None:
    if getattr(module.AgentLoopWorker, _MARKER, False):
        return
    wrap_methods(module.AgentLoopWorker, _MARKER, {"_run_agent_loop": _wrap_run_agent_loop,
                                                   "_compute_multi_modal_inputs": _wrap_compute_multi_modal_inputs})
    module.AgentLoopBase.__init__ = _wrap_agent_loop_init(module.AgentLoopBase.__init__)


def install() -> None:
    """Patch ``AgentLoopWorker`` when veRL's agent-loop module is imported."""
    from mapo_verl.patches._hooks import when_imported

    when_imported(AGENT_LOOP_MODULE, _patch)
