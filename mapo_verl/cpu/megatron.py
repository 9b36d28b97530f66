"""Megatron-Bridge and megatron-core on a CPU-only machine — for dry runs and CI, never on the GPU path.

veRL 0.9.1's Megatron engine builds its models through Megatron-Bridge, and both assume CUDA and
Transformer Engine (TE). With ``VERL_PLATFORM=cpu`` the CPU backend (:mod:`mapo_verl.cpu`) calls
:func:`install` in every process that imports veRL's Megatron engine; it changes exactly these
places (``docs/DESIGN.md``, "CPU backend"):

- **TE at import time.** Megatron-Bridge imports ``transformer_engine`` unconditionally (its
  diffusion models and LoRA layers subclass TE modules). :func:`import_megatron_bridge` imports it
  with a meta-path finder that serves placeholder ``transformer_engine*`` modules *to
  Megatron-Bridge's own modules only*: subclassing a placeholder works, instantiating one raises.
  Every other importer (megatron-core, veRL's ``find_spec`` probe) is told that TE is absent —
  the truth — so megatron-core keeps ``HAVE_TE = False``. The placeholders leave ``sys.modules``
  once the import is done.
- **Layer spec.** The Omni providers hard-code TE's layer spec, and the Qwen2.5-VL provider defaults
  to it; on CPU they get megatron-core's local spec (same parameters, unfused kernels; the VL
  provider's own ``local_layer_spec`` where its field still holds the default), and their language
  model gets the explicit
  ``[B, 1, S, S]`` causal-and-padding mask that the unfused attention needs in place of the
  ``[B, S]`` padding mask TE reads itself.
- **Initialisation.** Megatron-Bridge builds the model on the CPU only when asked at build time
  (``provide_distributed_model(use_cpu_initialization=True)``, which veRL does not pass); else it
  moves the model to the current CUDA device.
- **CUDA calls** that megatron-core makes on the paths a run reaches: the current device,
  ``synchronize``, streams (DDP and its gradient buckets), ``device="cuda"`` tensors (pipeline
  schedules, optimizer, gradient clipping and scaling), the parameter type names the optimizer accepts
  (``"torch.cuda.BFloat16Tensor"``: megatron-core's optimizer modules see a CPU parameter's type under
  its CUDA name, nobody else does), the CUDA RNG state that activation recompute saves and restores.

The recipe does the rest with ordinary settings (``recipes/parts/tiny_cpu_megatron.yaml``):
bf16, ``attention_backend: local``, fusions off.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import torch

__all__ = ["import_megatron_bridge", "install", "install_cuda_shims", "padding_to_causal_mask"]

_TE_ROOTS = ("transformer_engine", "transformer_engine_torch")
_TE_SERVED_IMPORTERS = ("megatron.bridge",)
_OMNI_PROVIDERS = (
    "megatron.bridge.models.qwen_omni.qwen25_omni_provider",
    "megatron.bridge.models.qwen_omni.qwen3_omni_provider",
)
# Vision-language providers: their ``transformer_layer_spec`` field selects the spec (default: TE's)
_VL_PROVIDERS = ("megatron.bridge.models.qwen_vl.qwen25_vl_provider",)


# --------------------------------------------------------------------------- Transformer Engine stand-in
class _PlaceholderMeta(type):
    """Classes that answer any attribute with another placeholder class (``te.ops.Sequential``)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


_placeholders: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    cls = _placeholders.get(qualname)
    if cls is None:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{qualname} belongs to Transformer Engine, which is not installed (CPU stand-in)")

        cls = _PlaceholderMeta(qualname.rpartition(".")[2], (), {"__init__": __init__, "__qualname__": qualname})
        _placeholders[qualname] = cls
    return cls


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__}.{name}")


class _PlaceholderLoader(importlib.abc.Loader):
    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []  # a package: its submodules come from this finder too
        return module

    def exec_module(self, module):
        pass


def _importer() -> str:
    """``__name__`` of the module whose code runs the import (import machinery frames skipped)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back
    return ""


class _PlaceholderFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in _TE_ROOTS or not _importer().startswith(_TE_SERVED_IMPORTERS):
            return None
        return importlib.machinery.ModuleSpec(fullname, _PlaceholderLoader(), is_package=True)


def import_megatron_bridge():
    """Import ``megatron.bridge`` (all its model bridges) on a machine without Transformer Engine."""
    if "megatron.bridge" in sys.modules or importlib.util.find_spec("transformer_engine") is not None:
        import megatron.bridge

        return megatron.bridge
    finder = _PlaceholderFinder()
    sys.meta_path.append(finder)
    try:
        import megatron.bridge
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in _TE_ROOTS]:
            del sys.modules[name]
    return megatron.bridge


# --------------------------------------------------------------------------- CUDA calls of megatron-core
def _on_host(factory):
    def make(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return make


class _CpuTorchProxy(types.ModuleType):
    """``torch`` as a megatron-core module sees it, with ``device="cuda"`` tensors made on the CPU."""

    tensor = staticmethod(_on_host(torch.tensor))
    zeros = staticmethod(_on_host(torch.zeros))
    ones = staticmethod(_on_host(torch.ones))
    empty = staticmethod(_on_host(torch.empty))
    full = staticmethod(_on_host(torch.full))

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)


# megatron-core modules that make their tensors with device="cuda"
_HOST_TENSOR_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.utils",  # its multi-tensor fallbacks (gradient norm without apex / TE)
    "megatron.core.distributed.param_and_grad_buffer",
)
# ... and those that accept parameters by their CUDA type name ("torch.cuda.BFloat16Tensor")
_CUDA_TYPE_NAME_MODULES = ("megatron.core.optimizer",)


def _type_names_as_cuda(type_method):
    @functools.wraps(type_method)
    def type_(self, *args, **kwargs):
        name = type_method(self, *args, **kwargs)
        if args or kwargs or self.is_cuda:
            return name
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith(_CUDA_TYPE_NAME_MODULES) and name.startswith("torch.") and ".cuda." not in name:
            return "torch.cuda." + name[len("torch."):]
        return name

    type_.__mapo_cpu__ = True
    return type_


class _HostStream:
    """A CUDA stream stand-in: on the CPU every operation is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event

    def synchronize(self):
        pass


_cuda_shims_installed = False


def install_cuda_shims() -> None:
    """Let megatron-core's training paths run on CPU tensors with gloo (idempotent)."""
    global _cuda_shims_installed
    if _cuda_shims_installed:
        return
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    # DDP wrapping and its gradient buckets run on side streams
    torch.cuda.Stream = _HostStream
    torch.cuda.current_stream = lambda *args, **kwargs: _HostStream()
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()

    from megatron.core.tensor_parallel import random as mcore_random

    for name in _HOST_TENSOR_MODULES:
        importlib.import_module(name).torch = _CpuTorchProxy()
    if not getattr(torch.Tensor.type, "__mapo_cpu__", False):
        torch.Tensor.type = _type_names_as_cuda(torch.Tensor.type)
    # Recompute saves and restores the "CUDA" RNG state; on CPU the CPU generator is the one in use.
    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: None
    mcore_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _cuda_shims_installed = True


# --------------------------------------------------------------------------- the Omni and VL providers
def padding_to_causal_mask(module, args, kwargs):
    """Forward pre-hook: a ``[B, S]`` padding mask (True = token) becomes the ``[B, 1, S, S]`` mask
    (True = masked) of megatron-core's unfused attention."""
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        causal = torch.triu(torch.ones(mask.shape[1], mask.shape[1], dtype=torch.bool, device=mask.device), 1)
        kwargs["attention_mask"] = causal[None, None] | ~mask.bool()[:, None, None, :]
    return args, kwargs


def _local_spec(*args, fp8=None, **kwargs):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(*args, **kwargs)


def _with_local_attention_mask(provide, vision_language: bool = False):
    @functools.wraps(provide)
    def provide_for_cpu(self, *args, **kwargs):
        from megatron.bridge.models.gpt_provider import default_layer_spec, local_layer_spec

        from mapo_verl.megatron.models import find_language_model

        if vision_language and self.transformer_layer_spec is default_layer_spec:
            self.transformer_layer_spec = local_layer_spec
        model = provide(self, *args, **kwargs)
        # Qwen25VLModel calls its language model's forward() directly, past any hook: its own call takes the mask
        masked = model if vision_language else find_language_model(model)
        masked.register_forward_pre_hook(padding_to_causal_mask, with_kwargs=True)
        return model

    provide_for_cpu.__mapo_cpu__ = True
    return provide_for_cpu


def _use_local_layer_spec(provider_module, vision_language: bool = False) -> None:
    if not vision_language:
        provider_module.get_gpt_layer_with_transformer_engine_spec = _local_spec
    for cls in vars(provider_module).values():
        if isinstance(cls, type) and cls.__module__ == provider_module.__name__ and "provide" in vars(cls):
            if not getattr(cls.provide, "__mapo_cpu__", False):
                cls.provide = _with_local_attention_mask(cls.provide, vision_language)


def _initialised_on_cpu(provide_distributed_model):
    @functools.wraps(provide_distributed_model)
    def provide_on_cpu(self, *args, **kwargs):
        kwargs["use_cpu_initialization"] = True  # else the built model is moved to "the current CUDA device"
        return provide_distributed_model(self, *args, **kwargs)

    provide_on_cpu.__mapo_cpu__ = True
    return provide_on_cpu


def install() -> None:
    """Everything above, in this process (idempotent). Call before veRL builds a Megatron model."""
    import_megatron_bridge()
    install_cuda_shims()
    from megatron.bridge.models.model_provider import ModelProviderMixin

    if not getattr(ModelProviderMixin.provide_distributed_model, "__mapo_cpu__", False):
        ModelProviderMixin.provide_distributed_model = _initialised_on_cpu(ModelProviderMixin.provide_distributed_model)
    for name in _OMNI_PROVIDERS:
        _use_local_layer_spec(importlib.import_module(name))
    for name in _VL_PROVIDERS:
        _use_local_layer_spec(importlib.import_module(name), vision_language=True)
