"""Rollout failures that never pass silently, and a metrics history that survives a resume.

veRL 0.9.1's v1 trainer marks a prompt whose trajectories raised as ``failure`` and, in
sync mode, trains on the group's surviving trajectories with padding in place of the
failed ones, logging the error under a random uid. Here the trainer's replay buffer reads
the error each failed prompt carries (recorded by :mod:`mapo_verl.patches.agent_loop`,
naming the row) and applies ``trainer.rollout_failures``:

- ``tolerate: false`` (default): the first failure ends the run with
  :class:`RolloutFailureError` naming every failed row;
- ``tolerate: true``: failed trajectories are skipped (veRL pads their slots), counted in
  ``mapo/rollout_failures`` (this step), ``mapo/rollout_failures_total`` and
  ``mapo/rollout_failure_frac`` (failed / submitted prompts), and the run fails once that
  fraction exceeds ``max_fraction``.

The per-dataset row-check counts (:mod:`mapo_verl.patches.dataset_checks`) are logged as
``mapo/bad_rows`` and ``mapo/truncated_clips``.

veRL's file logger opens its JSONL with ``"wb"``, so a resumed run erased the steps logged
before it. After a resume from step ``k`` the file keeps its records of steps ``≤ k`` and
is appended to (records of steps after ``k``, which the resumed run repeats, are dropped).
"""

from __future__ import annotations

import builtins
import functools
import json
import math
import os
from dataclasses import dataclass, field

from mapo_verl.patches._hooks import wrap_methods

__all__ = [
    "ROLLOUT_ERROR_TAG",
    "RolloutSampleError",
    "RolloutFailureError",
    "RolloutFailurePolicy",
    "keep_history",
    "install",
]

ROLLOUT_ERROR_TAG = "mapo_rollout_error"
_SETTINGS_KEY = "trainer.rollout_failures"
_TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"
_BUFFER_MODULE = "verl.trainer.ppo.v1.replay_buffer"
_TRACKING_MODULE = "verl.utils.tracking"
_SHOWN = 10

# the global step the trainer resumed from in this process (None: a fresh run)
_resumed_step: list[int | None] = [None]


class RolloutSampleError(RuntimeError):
    """A trajectory's rollout failed; the message names the sample (uid, session, dataset index)."""


class RolloutFailureError(RuntimeError):
    """Rollouts failed beyond what ``trainer.rollout_failures`` tolerates."""


@dataclass
class RolloutFailurePolicy:
    """``trainer.rollout_failures`` and the failures seen so far."""

    tolerate: bool = False
    max_fraction: float = 0.0
    submitted: dict[str, set] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    step_failures: int = 0

    @classmethod
    def from_config(cls, config) -> "RolloutFailurePolicy":
        section = dict(config.trainer.get("rollout_failures") or {})
        unknown = sorted(set(section) - {"tolerate", "max_fraction"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in {_SETTINGS_KEY}; allowed: ['max_fraction', 'tolerate']")
        tolerate, max_fraction = section.get("tolerate", False), section.get("max_fraction", 0.0)
        if not isinstance(tolerate, bool):
            raise ValueError(f"{_SETTINGS_KEY}.tolerate must be true or false, got {tolerate!r}")
        if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)) or not (
                math.isfinite(max_fraction) and 0 <= max_fraction <= 1):
            raise ValueError(f"{_SETTINGS_KEY}.max_fraction must be in [0, 1], got {max_fraction!r}")
        return cls(tolerate=tolerate, max_fraction=float(max_fraction))

    def observe(self, partition: str, prompt_uids: set, failed_uids: set, errors: dict[str, str]) -> None:
        """Record a replay-buffer snapshot; raise :class:`RolloutFailureError` when the policy says so."""
        self.submitted.setdefault(partition, set()).update(prompt_uids)
        known = self.failed.setdefault(partition, {})
        new = {uid: errors.get(uid, f"uid={uid}: no error recorded") for uid in failed_uids - known.keys()}
        if not new:
            return
        known.update(new)
        if partition == "train":
            self.step_failures += len(new)
        fraction = len(known) / max(1, len(self.submitted[partition]))
        if self.tolerate and fraction <= self.max_fraction:
            return
        reason = (f"{len(known)} of {len(self.submitted[partition])} {partition} prompts failed "
                  f"({fraction:.1%} > {_SETTINGS_KEY}.max_fraction={self.max_fraction})" if self.tolerate else
                  f"{len(new)} {partition} prompt(s) failed and {_SETTINGS_KEY}.tolerate=false")
        lines = [f"  {message}" for message in list(new.values())[:_SHOWN]]
        raise RolloutFailureError(f"rollout failed: {reason}:\n" + "\n".join(lines))

    def metrics(self) -> dict[str, float]:
        """This step's failure metrics (and the start of a new step)."""
        total = len(self.failed.get("train", {}))
        values = {"mapo/rollout_failures": float(self.step_failures),
                  "mapo/rollout_failures_total": float(total),
                  "mapo/rollout_failure_frac": total / max(1, len(self.submitted.get("train", ())))}
        self.step_failures = 0
        return values


def _rollout_errors(partition: str, uids: set) -> dict[str, str]:
    import transfer_queue as tq

    tags = (tq.kv_list() or {}).get(partition, {})
    return {uid: tags[uid][ROLLOUT_ERROR_TAG] for uid in uids if ROLLOUT_ERROR_TAG in tags.get(uid, {})}


def _wrap_sync_metadata(original):
    @functools.wraps(original)
    def _sync_metadata_from_transfer_queue(self):
        original(self)
        policy = getattr(self, "mapo_failure_policy", None)
        if policy is None:
            return
        for partition in set(self.failure_keys) | set(self.finished_keys) | set(self.running_keys):
            failed = set(self.failure_keys.get(partition, ()))
            prompts = (set(self.pending_keys.get(partition, ())) | set(self.running_keys.get(partition, ()))
                       | set(self.finished_keys.get(partition, ())) | failed)
            new = failed - policy.failed.get(partition, {}).keys()
            policy.observe(partition, prompts, failed, _rollout_errors(partition, new) if new else {})

    return _sync_metadata_from_transfer_queue


def _wrap_build_replay_buffer(original):
    @functools.wraps(original)
    def _build_replay_buffer(self):
        buffer = original(self)
        buffer.mapo_failure_policy = RolloutFailurePolicy.from_config(self.config)
        return buffer

    return _build_replay_buffer


def _wrap_compute_metrics(original):
    @functools.wraps(original)
    def _compute_metrics(self, batch, metrics, *args, **kwargs):
        policy = getattr(getattr(self, "replay_buffer", None), "mapo_failure_policy", None)
        if policy is not None:
            metrics.update(policy.metrics())
        counts = getattr(getattr(self, "train_dataset", None), "row_check_counts", None)
        if counts:
            metrics.update({f"mapo/{name}": float(value) for name, value in counts.items()})
        return original(self, batch, metrics, *args, **kwargs)

    return _compute_metrics


def _wrap_load_checkpoint(original):
    @functools.wraps(original)
    def _load_checkpoint(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        _resumed_step[0] = int(self.global_steps) if self.global_steps else None
        return result

    return _load_checkpoint


def keep_history(path: str, last_step: int) -> None:
    """Keep the records of steps ``≤ last_step`` of a veRL file-logger JSONL (drop torn or later lines)."""
    if not os.path.isfile(path):
        return
    kept = []
    with builtins.open(path, "rb") as handle:
        for line in handle:
            try:
                if int(json.loads(line)["step"]) <= last_step:
                    kept.append(line if line.endswith(b"\n") else line + b"\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by the interruption
    with builtins.open(path, "wb") as handle:
        handle.writelines(kept)


def _wrap_file_logger_init(module, original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        step = _resumed_step[0]
        if step is None:
            return original(self, *args, **kwargs)

        def open_appending(path, mode="r", *open_args, **open_kwargs):
            if mode == "wb":
                keep_history(path, step)
                mode = "ab"
            return builtins.open(path, mode, *open_args, **open_kwargs)

        module.open = open_appending
        try:
            return original(self, *args, **kwargs)
        finally:
            del module.open

    return __init__


_MARKER = "__mapo_faults_patched__"


def _patch_trainer(module) -> None:
    wrap_methods(module.PPOTrainer, _MARKER, {"_build_replay_buffer": _wrap_build_replay_buffer,
                                              "_compute_metrics": _wrap_compute_metrics,
                                              "_load_checkpoint": _wrap_load_checkpoint})


def _patch_buffer(module) -> None:
    wrap_methods(module.ReplayBuffer, _MARKER, {"_sync_metadata_from_transfer_queue": _wrap_sync_metadata})


def _patch_tracking(module) -> None:
    wrap_methods(module.FileLogger, _MARKER,
                 {"__init__": lambda original: _wrap_file_logger_init(module, original)})


def install() -> None:
    """Patch veRL's v1 trainer, replay buffer and file logger when they are imported."""
    from mapo_verl.patches._hooks import when_imported

    when_imported(_TRAINER_MODULE, _patch_trainer)
    when_imported(_BUFFER_MODULE, _patch_buffer)
    when_imported(_TRACKING_MODULE, _patch_tracking)
