"""Per-layer audio attention masses of an HF decoder during a training forward (docs/DESIGN.md "The attention branch").

:class:`AudioMassProbe` hooks the ``self_attn`` modules of chosen decoder layers of a
transformers model (Qwen2, the Qwen2.5-Omni thinker, Qwen2-Audio's language model, the
Qwen3-Omni thinker, …: any decoder whose attention goes through transformers' attention
interface). For every forward under autograd it records, per chosen layer, the head-reduced
mass ``a_t`` of every query position on the audio keys, by the indicator-V trick
(:func:`mapo_verl.hf.attention.indicator_v_mass`).

Usage::

    probe = AudioMassProbe(model, layers=[-3, -2, -1], head_reduce="max")
    with probe.capture(audio_key_mask) as capture:     # [b, S] in the model's input layout
        logits = model(**inputs).logits
        a = capture.mass(layer_reduce="mean")          # [b, S], differentiable
        (task_loss + eta * objective(a)).backward()    # recompute happens in here

Activation checkpointing (non-reentrant, as veRL and transformers use it) re-runs a layer's
forward during ``backward``; the hook then computes the same mass again — the recomputed
tensors refill the saved slots of the original graph — and records nothing new. The capture
must therefore stay open until ``backward`` has run. Reentrant checkpointing runs the forward
without autograd, so no mass can reach the loss: it fails with an error that says so.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from mapo_verl.core import check_reductions, reduce_layers, resolve_layers
from mapo_verl.core.checks import as_bool_mask
from mapo_verl.hf.attention import attention_interface_hook, indicator_v_mass

__all__ = ["AudioMassProbe", "MassCapture", "decoder_layers"]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-layer list of the model's text decoder.

    The text decoder is the one sub-module holding both ``embed_tokens`` and a ``layers``
    list whose entries have ``self_attn`` (audio / vision encoders have no token embedding).
    Works through FSDP1/FSDP2 and PEFT wrappers, which keep the original sub-modules.
    """
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "layers", None), torch.nn.ModuleList)
        and hasattr(module, "embed_tokens")
        and len(module.layers) > 0
        and all(hasattr(layer, "self_attn") for layer in module.layers)
    ]
    if len(found) != 1:
        names = [name or "<root>" for name, _ in found]
        raise ValueError(
            f"expected exactly one text decoder (a module with embed_tokens and layers[*].self_attn) in "
            f"{type(model).__name__}, found {len(found)}: {names}; pass the thinker / language model that is trained"
        )
    return found[0][1].layers


class MassCapture:
    """The masses recorded during one forward (and its backward).

    Attributes:
        audio_key_mask: bool ``[b, S]``, true at audio keys, in the model's input layout.
        per_layer: layer index -> ``[b, S]`` float32 head-reduced mass.
    """

    def __init__(self, audio_key_mask: torch.Tensor, layers: list[int]):
        if not isinstance(audio_key_mask, torch.Tensor) or audio_key_mask.dim() != 2:
            raise ValueError("audio_key_mask must be a [batch, seq_len] tensor in the model's input layout")
        self.audio_key_mask = as_bool_mask(audio_key_mask, "audio_key_mask")
        self.layers = layers
        self.per_layer: dict[int, torch.Tensor] = {}

    def record(self, layer: int, mass: torch.Tensor) -> None:
        if layer not in self.per_layer:
            if _inside_backward():
                raise RuntimeError(
                    f"layer {layer}'s attention ran under autograd only during backward: the forward ran without "
                    "gradients (reentrant activation checkpointing?). MAPO's attention loss needs non-reentrant "
                    "checkpointing: gradient_checkpointing_kwargs={'use_reentrant': False} (veRL's default)"
                )
            self.per_layer[layer] = mass
        elif not _inside_backward():
            raise RuntimeError(f"layer {layer} ran twice in one forward of this capture; begin a new capture "
                               "(probe.begin) for every forward")
        # else: activation-checkpoint recomputation; the original graph already holds this mass.

    def mass(self, layer_reduce: str = "mean") -> torch.Tensor:
        """``a`` ``[b, S]``: the recorded layers reduced with ``mean`` or ``max`` (default: mean)."""
        missing = [layer for layer in self.layers if layer not in self.per_layer]
        if missing:
            raise RuntimeError(
                f"no audio mass was recorded for decoder layer(s) {missing}: the forward ran without gradients "
                "(torch.no_grad, or reentrant activation checkpointing), or the layer's attention does not go "
                "through transformers' attention interface (a monkey-patched attention forward)"
            )
        return reduce_layers([self.per_layer[layer] for layer in self.layers], layer_reduce)


def _inside_backward() -> bool:
    """True while the autograd engine runs a backward (where checkpoint recomputation happens)."""
    return torch._C._current_graph_task_id() != -1


class AudioMassProbe:
    """Indicator-V audio-mass hooks on chosen decoder layers of an HF model (docs/DESIGN.md "The attention branch").

    Args:
        model: the model (FSDP / PEFT wrappers allowed).
        layers: decoder layer indices; negative ones count from the end.
        head_reduce: ``max`` or ``mean`` over heads, applied per layer before any layer
            reduction and before ``−log`` (docs/DESIGN.md "The method").
    """

    def __init__(self, model: torch.nn.Module, layers: list[int] | tuple[int, ...], *, head_reduce: str = "max"):
        check_reductions(head_reduce=head_reduce)
        decoder = decoder_layers(model)
        self.layers = resolve_layers(list(layers), len(decoder))
        self.head_reduce = head_reduce
        self._modules = {decoder[index].self_attn: index for index in self.layers}
        self._capture: MassCapture | None = None
        self._installed = False

    @contextmanager
    def installed(self) -> Iterator["AudioMassProbe"]:
        """Install the hooks for the duration of the context (removed on exit, errors included)."""
        if self._installed:
            raise RuntimeError("this AudioMassProbe is already installed")
        with attention_interface_hook({module: self for module in self._modules}):
            self._installed = True
            try:
                yield self
            finally:
                self._installed = False
                self._capture = None

    def begin(self, audio_key_mask: torch.Tensor) -> MassCapture:
        """Start recording the next forward's masses (replaces the previous capture)."""
        if not self._installed:
            raise RuntimeError("AudioMassProbe.begin() needs the hooks installed (use probe.installed())")
        self._capture = MassCapture(audio_key_mask, self.layers)
        return self._capture

    @contextmanager
    def capture(self, audio_key_mask: torch.Tensor) -> Iterator[MassCapture]:
        """``installed()`` and ``begin(audio_key_mask)`` for a single forward/backward."""
        with self.installed():
            yield self.begin(audio_key_mask)

    def on_attention(self, module: torch.nn.Module, attention_fn: Callable, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None, args: tuple, kwargs: dict) -> None:
        capture = self._capture
        if capture is None:
            raise RuntimeError("a hooked attention layer ran under autograd outside a capture: call "
                               "AudioMassProbe.begin() before the forward and keep it open until backward has run")
        mass = indicator_v_mass(attention_fn, module, query, key, value, attention_mask, capture.audio_key_mask,
                                *args, head_reduce=self.head_reduce, **kwargs)
        capture.record(self._modules[module], mass)
