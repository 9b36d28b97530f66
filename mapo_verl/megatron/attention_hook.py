"""The audio attention mass ``a_t`` and MAPO's attention loss inside megatron-core (docs/DESIGN.md "The attention branch", "Megatron").

Only megatron-core is imported here — no veRL, no Transformer Engine, no Megatron-Bridge —
so the hook runs wherever megatron-core runs (tested: 0.16.1 on a megatron-core GPT model,
0.18.2 on Megatron-Bridge's Qwen2.5-Omni, Qwen3-Omni and Qwen2-Audio models), and the GPU
check can exercise it on its own.

How it works
------------
* **Where.** The chosen decoder layers' ``SelfAttention.core_attention`` get an
  instance-level ``forward`` wrapper (state-dict keys are unchanged). The wrapper runs
  the layer's own core attention as usual, then a second time on the same ``q, k``
  (after RoPE / qk-norm) with ``v`` replaced by the 0/1 audio-key indicator
  (:func:`mapo_verl.core.indicator_values`); channel 0 of that output is the mass per
  query and local head (:func:`mapo_verl.core.mass_from_output`). Same kernel, masks,
  scale, GQA, window and CP ring as the real call; no ``[b, h, S, S]`` tensor is built by
  the hook (the unfused CPU kernel builds its own, as it does for the real call).
* **What travels with the call.** Per micro-batch and model chunk the caller builds an
  :class:`AudioMassRequest` (audio-key mask in the model's token layout, the objective,
  the gradient multiplier). :meth:`AudioMassHook.attach` hands it to the chunk's decoder
  for exactly one forward call; the decoder passes it down inside a
  :class:`MAPOPackedSeqParams` (a ``PackedSeqParams`` subclass wrapping the real one) as
  far as each layer's attention module. The attention module itself gets the real value
  back (``None`` on BSHD inputs: Megatron-Bridge's attention treats any non-``None``
  ``packed_seq_params`` as packed THD input), and the carrier goes on to the core attention
  call only: directly, or through the selective-recompute closure of
  ``_checkpointed_attention_forward``. Activation recompute — full or selective
  ``core_attn`` — captures the carrier in its closure, so the recomputed forward sees the
  same request, never a global.
* **The loss.** The method reduces the per-head mass over heads (``max|mean``) and then over
  the chosen layers (``mean|max``) before ``−log``. When the last chosen layer of the
  chunk has run, the hook gathers the detached per-head masses of every chosen layer
  over tensor parallel (every rank then holds all heads), makes them leaves, reduces
  them with :func:`mapo_verl.core.reduce_heads` / :func:`~mapo_verl.core.reduce_layers`,
  calls the request's objective (the caller maps the per-token mass to its own loss
  layout and calls :func:`mapo_verl.core.attention_objective_from_coefficients`), and
  takes ``d objective / d leaves``. Each rank keeps the slice of its own heads: the
  gather's backward is a split with no sum, so every local head gets exactly its
  gradient, once.
* **Injection.** On every chosen layer the core-attention output passes through
  :class:`_InjectAttentionLossGrad`, the identity in forward; in backward it adds
  ``η · multiplier · loss_scale · d objective / d mass`` into the local mass's graph (the
  pattern of megatron-core's MoE aux-loss scaler). Nothing is sent to the last pipeline
  stage; ``d objective / d mass`` depends only on forward values, so the injection is
  exact under recompute (the recomputed mass carries the graph, the first forward
  carried the values) and at any stage or VPP chunk.

Limits (checked at install, each with an error naming the setting): the chosen layers
must all sit in one model chunk (one PP stage, one VPP chunk) because the layer reduce
precedes ``−log``; attention dropout must be 0; no FP8 attention; context parallelism
needs Transformer Engine's attention (the unfused local attention cannot run the CP ring).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.transformer_layer import TransformerLayer

from mapo_verl.core import (
    check_reductions,
    indicator_values,
    mass_from_output,
    reduce_heads,
    reduce_layers,
    resolve_layers,
)
from mapo_verl.megatron.models import decoder_layers, find_language_model

__all__ = [
    "AudioMassRequest",
    "MAPOPackedSeqParams",
    "AudioMassHook",
    "sum_over_pipeline",
]

@dataclass
class AudioMassRequest:
    """What one forward call of one model chunk needs, and what the hook leaves in it.

    Args:
        audio_keys: bool/0-1 audio-key mask in the model's *local* token layout: ``[B, S]``
            for ``sbhd`` attention (after any context-parallel split), ``[1, T]`` for packed
            ``thd`` attention (the packed, CP-local order the model sees).
        objective: ``a -> scalar``. ``a`` is ``a_t`` (heads and layers reduced) in the same
            layout as ``audio_keys`` (``[B, S]`` or ``[1, T]``), float32 or wider; the
            objective returns the micro-batch's attention loss *without* η, normalised with
            the global-batch normalisers (so that micro-batch losses add up to the step's
            loss). It may run collectives over the context-parallel group.
        grad_multiplier: what the caller's main loss is multiplied by before the backward
            pass of the pipeline schedule (veRL's Megatron engine: the CP size when the loss
            function returns ``(loss, metrics)``; ``routed_num_tokens / dp_size`` in the
            per-token-loss regime), so the injected gradient is normalised like the main one.

    Filled by the hook: ``masses`` (layer number → detached local per-head mass), ``grads``
    (layer number → ``d objective / d mass`` for the local heads), ``loss`` (detached value
    of the objective) and ``mass`` (detached ``a`` passed to the objective).
    """

    audio_keys: torch.Tensor
    objective: Callable[[torch.Tensor], torch.Tensor]
    grad_multiplier: float = 1.0
    masses: dict[int, torch.Tensor] = field(default_factory=dict)
    grads: dict[int, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None
    mass: torch.Tensor | None = None


@dataclass
class MAPOPackedSeqParams(PackedSeqParams):
    """The ``packed_seq_params`` the decoder passes down while a request is attached.

    It mirrors every field of the real ``PackedSeqParams`` (``inner``; ``None`` for
    ``sbhd`` inputs, then ``qkv_format`` stays ``None`` and megatron-core treats the call
    as unpacked) and carries the :class:`AudioMassRequest`. The hooked core attention
    hands ``inner`` to the real kernel, so the kernel never sees this class.
    """

    inner: PackedSeqParams | None = None
    mapo: AudioMassRequest | None = None

    @classmethod
    def wrap(cls, inner: PackedSeqParams | None, request: AudioMassRequest) -> "MAPOPackedSeqParams":
        if isinstance(inner, MAPOPackedSeqParams):
            raise RuntimeError("an audio-mass request is already attached to this forward call")
        base = {} if inner is None else {f.name: getattr(inner, f.name) for f in fields(PackedSeqParams)}
        return cls(**base, inner=inner, mapo=request)


def sum_over_pipeline(values: torch.Tensor) -> torch.Tensor:
    """Sum a per-rank tensor over the pipeline group, in place; every stage must call it.

    Stages without hooked layers pass zeros, so the result on every stage (the logging
    one included) is the hooked stage's value. A no-op without pipeline parallelism.
    """
    if dist.is_initialized() and parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=parallel_state.get_pipeline_model_parallel_group())
    return values


class _InjectAttentionLossGrad(torch.autograd.Function):
    """Identity on the core-attention output; backward adds ``scale · d objective / d mass``."""

    @staticmethod
    def forward(ctx, output, mass, request, layer_number, scale_fn):
        ctx.request, ctx.layer_number, ctx.scale_fn = request, layer_number, scale_fn
        return output

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.request.grads.get(ctx.layer_number)
        if grad is None:
            raise RuntimeError(f"no attention-loss gradient for layer {ctx.layer_number}: the chunk's forward did "
                               "not reach every chosen layer")
        return grad_output, grad * ctx.scale_fn(grad), None, None, None


def _pipeline_layer_map(local: list[list[int]]) -> list[list[list[int]]]:
    """Layer numbers per (pipeline rank, VPP chunk), gathered from every stage."""
    if not dist.is_initialized() or parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return [local]
    gathered: list = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(gathered, local, group=parallel_state.get_pipeline_model_parallel_group())
    return gathered


class AudioMassHook:
    """Install the indicator-V audio-mass hook on the chosen layers of a megatron-core model.

    Args:
        model_chunks: the rank's model chunks (veRL's ``engine.module``; one per VPP stage),
            possibly wrapped (DDP, Float16Module); each holds one megatron-core GPTModel.
        layers: layer indices (0-based, negative from the end), global over the model.
        head_reduce: ``max`` | ``mean`` over *all* heads (exact under TP).
        layer_reduce: ``mean`` | ``max`` over the chosen layers.
        coef: η, the weight of the attention loss.
        config_key: the config key named in errors.

    Every rank of the pipeline group must construct the hook (it gathers the layer map).
    Raises ``ValueError`` when the chosen layers span model chunks (naming layers and
    chunks), and ``NotImplementedError`` for settings the indicator-V trick cannot serve.
    """

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        layers: Sequence[int],
        *,
        head_reduce: str = "max",
        layer_reduce: str = "mean",
        coef: float = 1.0,
        config_key: str = "layers",
    ):
        check_reductions(head_reduce, layer_reduce)
        self.head_reduce, self.layer_reduce, self.coef = head_reduce, layer_reduce, float(coef)
        language_models = [find_language_model(chunk) for chunk in model_chunks]
        self.config = language_models[0].config
        # megatron numbers its layers from 1
        self.layer_numbers = [i + 1 for i in resolve_layers(layers, self.config.num_layers, key=config_key)]
        self._check_config(self.config)

        layer_map = _pipeline_layer_map([[layer.layer_number for layer in decoder_layers(lm)]
                                         for lm in language_models])
        owners = sorted({(pp, vp) for pp, chunks in enumerate(layer_map)
                         for vp, numbers in enumerate(chunks) for n in numbers if n in self.layer_numbers})
        held = {n for chunks in layer_map for numbers in chunks for n in numbers}
        missing = [n - 1 for n in self.layer_numbers if n not in held]
        if missing:
            raise ValueError(f"{config_key}: decoder layers {missing} (0-based) are not built on any pipeline stage")
        if len(owners) > 1:
            where = ", ".join(f"pipeline stage {pp} / VPP chunk {vp}" for pp, vp in owners)
            raise ValueError(
                f"{config_key} = {list(layers)} (layers {[n - 1 for n in self.layer_numbers]}, 0-based) span several "
                f"model chunks ({where}); MAPO reduces a_t over the chosen layers before -log, which is local to one "
                "chunk: choose layers held by one pipeline stage and one VPP chunk (e.g. the last ones), or change "
                "the pipeline layout"
            )
        self._owner_chunk: int | None = None
        self._pending: dict[int, AudioMassRequest | None] = {}
        self._restore: list[tuple[torch.nn.Module, str]] = []
        for vp, lm in enumerate(language_models):
            layers_here = decoder_layers(lm)
            if not any(layer.layer_number in self.layer_numbers for layer in layers_here):
                continue
            self._owner_chunk = vp
            self._wrap_decoder(lm.decoder, vp)
            for layer in layers_here:  # the other layers only unwrap the carrier for their attention
                self._wrap_attention(layer, measure=layer.layer_number in self.layer_numbers)

    # ------------------------------------------------------------------ install
    @staticmethod
    def _check_config(config) -> None:
        if config.attention_dropout != 0:
            raise NotImplementedError(
                f"attention_dropout={config.attention_dropout}: the indicator-V audio mass needs the same attention "
                "probabilities in both calls; set attention_dropout to 0 (override_transformer_config)"
            )
        if getattr(config, "fp8_dot_product_attention", False) or getattr(config, "fp8_multi_head_attention", False):
            raise NotImplementedError("FP8 attention quantises the 0/1 indicator values: disable "
                                      "fp8_dot_product_attention / fp8_multi_head_attention for MAPO's attention loss")

    def _wrap_decoder(self, decoder: torch.nn.Module, chunk: int) -> None:
        original = decoder.forward
        signature = inspect.signature(original)
        self._pending[chunk] = None

        def forward(*args, **kwargs):
            request = self._pending.get(chunk)
            if request is None:
                return original(*args, **kwargs)
            self._pending[chunk] = None
            bound = signature.bind(*args, **kwargs)
            bound.arguments["packed_seq_params"] = MAPOPackedSeqParams.wrap(
                bound.arguments.get("packed_seq_params"), request
            )
            return original(*bound.args, **bound.kwargs)

        decoder.forward = forward
        self._restore.append((decoder, "forward"))

    def _wrap_attention(self, layer: TransformerLayer, *, measure: bool) -> None:
        """Unwrap the carrier for the layer's attention module; hand it to the core attention (measured layers)."""
        attention = layer.self_attention
        if not isinstance(attention, SelfAttention):
            raise NotImplementedError(f"decoder layer {layer.layer_number - 1} has {type(attention).__name__}, "
                                      "not megatron-core SelfAttention: the audio-mass hook cannot reach its q and k")
        core = attention.core_attention
        cp_group = attention.pg_collection.cp
        cp_size = dist.get_world_size(cp_group) if dist.is_initialized() and cp_group is not None else 1
        if isinstance(core, DotProductAttention) and cp_size > 1:
            raise NotImplementedError(
                f"context-parallel size {cp_size} with megatron-core's unfused DotProductAttention (decoder layer "
                f"{layer.layer_number - 1}): context parallelism runs only through Transformer Engine's attention "
                "(TEDotProductAttention); install transformer-engine or set context_parallel_size=1"
            )
        active: list[MAPOPackedSeqParams] = []  # the carrier of this layer's attention call in progress
        original_attention = attention.forward
        attention_signature = inspect.signature(original_attention)

        def attention_forward(*args, **kwargs):
            bound = attention_signature.bind(*args, **kwargs)
            carrier = bound.arguments.get("packed_seq_params")
            if not isinstance(carrier, MAPOPackedSeqParams):
                return original_attention(*args, **kwargs)
            bound.arguments["packed_seq_params"] = carrier.inner
            if not measure:
                return original_attention(*bound.args, **bound.kwargs)
            active.append(carrier)
            try:
                return original_attention(*bound.args, **bound.kwargs)
            finally:
                active.pop()

        attention.forward = attention_forward
        self._restore.append((attention, "forward"))
        if not measure:
            return
        original_checkpointed = attention._checkpointed_attention_forward
        checkpointed_signature = inspect.signature(original_checkpointed)

        def checkpointed_attention_forward(*args, **kwargs):
            # selective recompute: the carrier rides in the closure that the backward pass calls again
            bound = checkpointed_signature.bind(*args, **kwargs)
            if active and bound.arguments.get("packed_seq_params") is active[-1].inner:
                bound.arguments["packed_seq_params"] = active[-1]
            return original_checkpointed(*bound.args, **bound.kwargs)

        attention._checkpointed_attention_forward = checkpointed_attention_forward
        self._restore.append((attention, "_checkpointed_attention_forward"))
        self._wrap_core_attention(core, layer.layer_number, attention.pg_collection.tp, active)

    def _wrap_core_attention(self, core: torch.nn.Module, layer_number: int, tp_group,
                             active: list[MAPOPackedSeqParams]) -> None:
        original = core.forward

        def forward(query, key, value, attention_mask, *args, packed_seq_params=None, **kwargs):
            if isinstance(packed_seq_params, MAPOPackedSeqParams):
                carrier = packed_seq_params
            else:
                carrier = active[-1] if active else None
            inner = packed_seq_params if carrier is None else carrier.inner
            output = original(query, key, value, attention_mask, *args, packed_seq_params=inner, **kwargs)
            if carrier is None:
                return output
            request = carrier.mapo
            packed = inner is not None and inner.qkv_format == "thd"
            if packed:  # [T, G, D]: give the indicator a batch axis of 1
                indicator = indicator_values(request.audio_keys, value.unsqueeze(1), seq_axis=0, batch_axis=1)
                indicator = indicator.squeeze(1)
            else:  # [S, B, G, D]
                indicator = indicator_values(request.audio_keys, value, seq_axis=0, batch_axis=1)
            indicator_out = original(query, key, indicator.contiguous(), attention_mask, *args,
                                     packed_seq_params=inner, **kwargs)
            local_heads = query.shape[-2]
            mass = mass_from_output(indicator_out.reshape(*indicator_out.shape[:-1], local_heads, -1))
            if packed and mass.dim() == 3:  # TE may return [T, 1, H*D] for thd
                mass = mass.squeeze(1)
            if layer_number not in request.masses:  # first forward (a recompute finds it recorded)
                request.masses[layer_number] = mass.detach()
                if len(request.masses) == len(self.layer_numbers):
                    self._solve(request, tp_group, packed)
            if not mass.requires_grad:
                return output
            return _InjectAttentionLossGrad.apply(output, mass, request, layer_number, self._scale_fn(request))

        core.forward = forward
        self._restore.append((core, "forward"))

    # ------------------------------------------------------------------ loss
    def _scale_fn(self, request: AudioMassRequest) -> Callable[[torch.Tensor], torch.Tensor | float]:
        config = self.config

        def scale(grad: torch.Tensor):
            factor = self.coef * request.grad_multiplier
            if config.grad_scale_func is not None:  # the optimizer's loss scale, as Megatron applies to the loss
                return config.grad_scale_func(torch.ones((), device=grad.device, dtype=torch.float32)).to(grad.dtype) \
                    * factor
            return factor

        return scale

    def _solve(self, request: AudioMassRequest, tp_group, packed: bool) -> None:
        """Reduce the chosen layers' masses, run the objective, keep ``d objective / d mass`` per layer."""
        tp_size = dist.get_world_size(tp_group) if dist.is_initialized() and tp_group is not None else 1
        tp_rank = dist.get_rank(tp_group) if tp_size > 1 else 0
        leaves, local_heads = [], None
        for number in self.layer_numbers:
            local = request.masses[number]
            local_heads = local.shape[-1]
            if tp_size > 1:
                parts = [torch.empty_like(local) for _ in range(tp_size)]
                dist.all_gather(parts, local.contiguous(), group=tp_group)
                local = torch.cat(parts, dim=-1)
            leaves.append(local.to(torch.promote_types(local.dtype, torch.float32)).requires_grad_(True))
        with torch.enable_grad():
            per_layer = [reduce_heads(leaf, self.head_reduce, head_axis=-1) for leaf in leaves]
            mass = reduce_layers(per_layer, self.layer_reduce)
            mass = mass.unsqueeze(0) if packed else mass.transpose(0, 1)
            loss = request.objective(mass)
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0):
                raise TypeError("the attention-loss objective must return a scalar tensor")
            grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
        for number, leaf, grad in zip(self.layer_numbers, leaves, grads):
            grad = torch.zeros_like(leaf) if grad is None else grad
            local_grad = grad[..., tp_rank * local_heads:(tp_rank + 1) * local_heads]
            request.grads[number] = local_grad.to(request.masses[number].dtype).contiguous()
        request.loss = loss.detach()
        request.mass = mass.detach()

    # ------------------------------------------------------------------ per call
    def owns(self, chunk_index: int) -> bool:
        """Whether model chunk ``chunk_index`` of this rank holds the chosen layers."""
        return self._owner_chunk == chunk_index

    @contextmanager
    def attach(self, chunk_index: int, request: AudioMassRequest) -> Iterator[AudioMassRequest]:
        """Hand ``request`` to chunk ``chunk_index``'s decoder for the one forward call in the block.

        On return the hook has filled ``request.loss`` / ``request.mass``; raises if the
        chunk's decoder was not called or did not run every chosen layer.
        """
        if not self.owns(chunk_index):
            raise ValueError(f"model chunk {chunk_index} holds none of the chosen layers; check owns() first")
        self._pending[chunk_index] = request
        try:
            yield request
        finally:
            consumed = self._pending[chunk_index] is None
            self._pending[chunk_index] = None
        if not consumed:
            raise RuntimeError("the model chunk's decoder was not called while the audio-mass request was attached")
        if request.loss is None:
            ran = sorted(n - 1 for n in request.masses)
            raise RuntimeError(f"only decoder layers {ran} (0-based) of {[n - 1 for n in self.layer_numbers]} ran "
                               "their core attention with the audio-mass request")

    def remove(self) -> None:
        """Restore the original ``forward`` methods."""
        for module, name in self._restore:
            module.__dict__.pop(name, None)
        self._restore.clear()
        self._pending.clear()
        self._owner_chunk = None
