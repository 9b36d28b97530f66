"""MAPO's attention branch as both engines run it (FSDP and Megatron; docs/DESIGN.md, "The attention branch").

- :func:`attention_settings`: the one way an engine learns the branch's settings, from the actor
  config veRL binds into its loss function (``partial(ppo_loss, config=actor_config)``);
- :class:`AttentionBranch`: the protocol over one mini-batch of the policy update — checks of the
  trainer's fields (:mod:`mapo_verl.core.contract`), the rows the branch applies to (rows that hold
  an audio token), the normalisers ``G`` and ``N`` summed over data-parallel ranks, and per
  micro-batch the objective and the audio-mass statistics;
- :class:`MassStatistics`: the sums behind the ``mapo/<modality>_mass*`` and ``mapo/<modality>_lift`` metrics
  (``mapo/audio_*`` in audio-only runs).

The engines keep only what differs: how ``a_t`` is captured and mapped to response positions,
how the gradient enters, and how metrics are reduced over their parallel groups.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from tensordict import TensorDict

from mapo_verl.config import AttentionLossConfig, MAPOConfig
from mapo_verl.core import (
    NUM_DECILES,
    attention_objective_from_coefficients,
    audio_lift,
    position_metrics,
    sums_by_decile,
)
from mapo_verl.core.checks import as_bool_mask, check_finite_where
from mapo_verl.core.contract import (
    AUDIO_LABEL,
    COEF_FIELD,
    CONFIG_PREFIX,
    FAILED_FIELD,
    GATE_FIELD,
    LIFT_STEM,
    MASS_STEM,
    modality_metric,
)
from mapo_verl.modalities import key_mask, key_token_ids, metric_label, modality

__all__ = [
    "attention_settings",
    "attention_key_ids",
    "AttentionBranch",
    "response_width",
    "dense_response_field",
    "rows_with_audio",
    "MassStatistics",
]


def attention_settings(loss_function: Callable) -> tuple[Any, AttentionLossConfig] | None:
    """``(actor config, attention config)`` bound into veRL's ``partial(ppo_loss, config=actor_config)``.

    ``None`` when the loss function carries no MAPO policy-loss config.
    """
    actor_config = getattr(loss_function, "keywords", {}).get("config")
    mapo = getattr(getattr(actor_config, "policy_loss", None), "mapo", None)
    return (actor_config, mapo.attention) if isinstance(mapo, MAPOConfig) else None


def attention_key_ids(config_or_model: Any, actor_config: Any) -> tuple[int, ...]:
    """The token ids the attention loss counts as keys: the placeholders (and, with
    ``attention.include_audio_markers``, the markers) of the configured ``modalities``."""
    mapo: MAPOConfig = actor_config.policy_loss.mapo
    kinds = [modality(name) for name in mapo.modalities]
    return key_token_ids(config_or_model, kinds, mapo.attention.include_audio_markers)


def require_attention_fields(data: TensorDict, coef: float) -> None:
    """Fail naming the fields when η > 0 but the actor batch lacks the trainer's coefficients."""
    missing = [name for name in (COEF_FIELD, GATE_FIELD) if name not in data.keys()]
    if missing:
        raise KeyError(
            f"{CONFIG_PREFIX}.attention.coef={coef} > 0 but the actor batch lacks {missing}: the MAPO trainer "
            "(trainer.v1.trainer_mode=mapo) writes these response-aligned fields; set the coef to 0 to train "
            "without the attention loss"
        )


def response_width(data: TensorDict) -> int:
    """The micro-batch's padded response width: its longest response (veRL's ``response_mask``)."""
    mask = data["response_mask"]
    return int(mask.offsets().diff().max()) if mask.is_nested else mask.shape[-1]


def dense_response_field(value: torch.Tensor, width: int, name: str) -> torch.Tensor:
    """A response-aligned field as a dense ``[B, width]`` tensor (nested rows are zero-padded).

    Padded fields may be wider than the micro-batch's responses (veRL pads to the configured
    maximum): only padding is cut. A field narrower than a response is an error.
    """
    dense = value.to_padded_tensor(0) if value.is_nested else value
    if dense.shape[1] >= width:
        return dense[:, :width]
    if value.is_nested:
        return torch.nn.functional.pad(dense, (0, width - dense.shape[1]))
    raise ValueError(f"{name} has {dense.shape[1]} response positions but the responses have {width}: it must be "
                     "response-aligned like 'advantages'")


def audio_keys_per_row(input_ids: torch.Tensor, audio_ids: tuple[int, ...]) -> torch.Tensor:
    """long ``[B]``: the number of audio-key tokens in each row of a nested (jagged) ``input_ids``."""
    lengths = input_ids.offsets().diff()
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    hits = torch.zeros(len(lengths), dtype=torch.long, device=lengths.device)
    hits.index_add_(0, rows, key_mask(input_ids.values(), audio_ids).long())
    return hits


def rows_with_audio(input_ids: torch.Tensor, audio_ids: tuple[int, ...]) -> torch.Tensor:
    """bool ``[B]``: rows of a nested (jagged) ``input_ids`` that hold at least one audio-key token."""
    return audio_keys_per_row(input_ids, audio_ids) > 0


def branch_masks(data: TensorDict, audio_ids: tuple[int, ...], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid, gated)`` ``[B, width]``: response tokens of rows with audio, and the gated ones among them.

    Rows without an audio token are left out of the branch: they count in neither ``G`` nor
    ``N`` (their mass is 0 with no gradient).
    """
    response_mask = dense_response_field(data["response_mask"], width, "response_mask").bool()
    valid = response_mask & rows_with_audio(data["input_ids"], audio_ids).to(response_mask.device)[:, None]
    gated = as_bool_mask(dense_response_field(data[GATE_FIELD], width, GATE_FIELD), GATE_FIELD) & valid
    return valid, gated


def check_coefficients(data: TensorDict, gated: torch.Tensor) -> None:
    """The trainer's ``c_t`` must be finite and ≥ 0 where the branch reads them (once per mini-batch)."""
    coef = dense_response_field(data[COEF_FIELD], gated.shape[-1], COEF_FIELD)
    check_finite_where(coef, gated, COEF_FIELD)
    if bool((coef < 0)[gated].any()):
        raise ValueError(f"{COEF_FIELD} must be >= 0 at gated positions (c_t = gate·(t/T)^κ·ν̃·pos)")


def global_branch_counts(valid: torch.Tensor, gated: torch.Tensor, group: Any, device: Any) -> tuple[float, float]:
    """``G`` (responses in the branch) and ``N`` (gated tokens) of the mini-batch, summed over ``group``."""
    counts = torch.stack([valid.any(dim=-1).sum(), gated.sum()]).to(device=device, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    num_sequences, num_tokens = counts.clamp(min=1).cpu().tolist()
    return num_sequences, num_tokens


def _response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` response lengths: nested rows' lengths, or the last valid position + 1 of a dense mask."""
    if response_mask.is_nested:
        return response_mask.offsets().diff()
    dense = response_mask.bool()
    last_from_end = dense.flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.where(dense.any(dim=-1), dense.shape[-1] - last_from_end, torch.zeros_like(last_from_end))


class MassStatistics:
    """Audio-mass sums by response-position decile over one mini-batch, reducible across ranks,
    with the length-normalised lift and the mass on failed / successful responses."""

    # lift sum, failed-token mass sum and count, successful-token mass sum and count
    _EXTRA = 5

    def __init__(self, label: str = AUDIO_LABEL):
        self.label = label  # the metrics' modality part (mapo_verl.modalities.metric_label)
        self.sums = torch.zeros(NUM_DECILES, dtype=torch.float64)
        self.counts = torch.zeros(NUM_DECILES, dtype=torch.float64)
        self.extra = torch.zeros(self._EXTRA, dtype=torch.float64)

    def add(self, mass: torch.Tensor, valid: torch.Tensor, data: TensorDict, audio_ids: tuple[int, ...]) -> None:
        """Add a micro-batch: ``mass`` and ``valid`` ``[B, T]`` response-aligned, ``data`` its batch."""
        mass, valid = mass.detach().cpu(), valid.cpu()
        sums, counts = sums_by_decile(mass, valid)
        self.sums += sums
        self.counts += counts
        input_ids = data["input_ids"]
        prompt_lengths = (input_ids.offsets().diff() - _response_lengths(data["response_mask"])).cpu()
        lift = audio_lift(mass, valid, prompt_lengths, audio_keys_per_row(input_ids, audio_ids).cpu())
        self.extra[0] += lift[valid].sum()
        if FAILED_FIELD in data.keys():
            failed = dense_response_field(data[FAILED_FIELD], mass.shape[-1], FAILED_FIELD).cpu().bool()
            for offset, rows in ((1, valid & failed), (3, valid & ~failed)):
                self.extra[offset] += mass[rows].double().sum()
                self.extra[offset + 1] += rows.sum()

    def packed(self) -> torch.Tensor:
        """One flat float64 tensor to all-reduce (decile sums, decile counts, then the extra sums)."""
        return torch.cat([self.sums, self.counts, self.extra])

    def metrics_from(self, packed: torch.Tensor) -> dict[str, float]:
        """From :meth:`packed` summed over ranks: ``mapo/<label>_mass`` (+ ``/decile_k``, ``/late_early_ratio``),
        ``mapo/<label>_lift`` and ``mapo/<label>_mass_failed`` / ``_mass_success`` (token means over responses
        whose task reward marks them failed / not failed); ``<label>`` is ``audio`` in audio-only runs."""
        sums, counts, extra = packed.detach().cpu().double().split([NUM_DECILES, NUM_DECILES, self._EXTRA])
        mass_metric = modality_metric(self.label, MASS_STEM)
        metrics = {}
        if float(counts.sum()) > 0:
            metrics[mass_metric] = float(sums.sum() / counts.sum())
            metrics[modality_metric(self.label, LIFT_STEM)] = float(extra[0] / counts.sum())
        for name, offset in (("failed", 1), ("success", 3)):
            if float(extra[offset + 1]) > 0:
                metrics[f"{mass_metric}_{name}"] = float(extra[offset] / extra[offset + 1])
        metrics.update(position_metrics(mass_metric, sums, counts))
        return metrics


class AttentionBranch:
    """MAPO's attention branch over one mini-batch of the policy update, for either engine.

    :meth:`begin` runs once per ``forward_backward_batch``: it checks the trainer's fields,
    masks the rows that hold audio and sums ``G`` / ``N`` over ``group`` (data-parallel ranks).
    :meth:`objective` runs per micro-batch on ``a_t`` at response positions (aligned like
    ``log_probs``) and adds the micro-batch to the audio-mass statistics.
    """

    def __init__(self, attention: AttentionLossConfig, actor_config: Any, audio_ids: tuple[int, ...],
                 num_sequences: float, num_tokens: float):
        self.attention = attention
        self.loss_agg_mode: str = actor_config.loss_agg_mode
        # veRL's seq-mean-token-sum-norm divides by loss_scale_factor, else by the padded response width
        self.horizon: int | None = getattr(actor_config, "loss_scale_factor", None)
        self.audio_ids = audio_ids
        self.num_sequences, self.num_tokens = num_sequences, num_tokens
        self.statistics = MassStatistics(metric_label(actor_config.policy_loss.mapo.modalities))

    @classmethod
    def begin(cls, data: TensorDict, attention: AttentionLossConfig, actor_config: Any, audio_ids: tuple[int, ...],
              group: Any, device: Any) -> "AttentionBranch":
        """Check the mini-batch ``data`` and count its ``G`` (responses in the branch) and ``N`` (gated tokens)."""
        require_attention_fields(data, attention.coef)
        valid, gated = branch_masks(data, audio_ids, response_width(data))
        check_coefficients(data, gated)
        return cls(attention, actor_config, audio_ids, *global_branch_counts(valid, gated, group, device))

    def objective(self, mass: torch.Tensor, micro_batch: TensorDict, dp_size: int) -> torch.Tensor:
        """``L_attn`` (without η) of one micro-batch from its response-aligned audio mass ``[B, ≥T]``."""
        width = response_width(micro_batch)
        mass = dense_response_field(mass, width, "audio mass")
        valid, gated = branch_masks(micro_batch, self.audio_ids, width)
        loss = attention_objective_from_coefficients(
            mass, dense_response_field(micro_batch[COEF_FIELD], width, COEF_FIELD), gated, eps=self.attention.eps,
            loss_agg_mode=self.loss_agg_mode, num_sequences=self.num_sequences, num_tokens=self.num_tokens,
            horizon=self.horizon, dp_size=dp_size)
        self.statistics.add(mass, valid, micro_batch, self.audio_ids)
        return loss
