"""Megatron-Bridge's HF export of the tiny bridge models, names and shapes (run as a script per gloo rank).

``python export_names_harness.py --rank R --world 2 --port P --out DIR --scenarios qwen25_omni:pp2,...``
builds each family's Megatron-Bridge model (``bridge_models.build_model``) under the scenario's layout
(``tp2``: TP = 2; ``pp2``: PP = 2, each rank holding half the decoder layers), exports it the way veRL
0.9.1's Megatron engine does at weight sync (``AutoBridge.export_hf_weights``, with the bridge made from the
family's HF config), and records the exported names and shapes next to the state dict of the HF class vLLM's
parameter names are derived from (built on the meta device from the same config; transformers 5's packed MoE
experts split per expert by veRL's ``unfuse_moe_params``, as in the released checkpoints).
``test_bridge_export_names.py`` checks them against vLLM's loading rules.
"""

from __future__ import annotations

import os
import sys

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(os.path.dirname(_HERE), "megatron")]
from gloo_world import serve_rank  # noqa: E402

from mapo_verl.cpu.megatron import import_megatron_bridge, install_cuda_shims  # noqa: E402

import_megatron_bridge()
install_cuda_shims()
import bridge_models as bm  # noqa: E402
import transformers  # noqa: E402
from megatron.bridge import AutoBridge  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402


def hf_configs(family: str, model: torch.nn.Module):
    """(the full HF config the bridge is made from, the HF class and config vLLM's names derive from)."""
    provider = model.config
    if family == "qwen2_audio":
        config = provider.hf_config
        config.architectures = ["Qwen2AudioForConditionalGeneration"]
        return config, transformers.Qwen2AudioForConditionalGeneration, config
    thinker = provider.thinker_config
    if family == "qwen25_omni":
        full = transformers.Qwen2_5OmniConfig(thinker_config=thinker.to_dict(),
                                              architectures=["Qwen2_5OmniForConditionalGeneration"])
        return full, transformers.Qwen2_5OmniThinkerForConditionalGeneration, thinker
    full = transformers.Qwen3OmniMoeConfig(thinker_config=thinker.to_dict(),
                                           architectures=["Qwen3OmniMoeForConditionalGeneration"])
    return full, transformers.Qwen3OmniMoeThinkerForConditionalGeneration, thinker


LAYOUTS = {"tp2": dict(tp=2, pp=1), "pp2": dict(tp=1, pp=2)}


def run_scenario(scenario: str) -> dict:
    family, layout = scenario.split(":")
    ps.initialize_model_parallel(LAYOUTS[layout]["tp"], LAYOUTS[layout]["pp"])
    try:
        model = bm.build_model(family, **LAYOUTS[layout])
        full, hf_class, hf_config = hf_configs(family, model)
        exported = {name: list(tensor.shape) for name, tensor in
                    AutoBridge.from_hf_config(full).export_hf_weights([model], cpu=True, show_progress=False)}
        with torch.device("meta"):
            reference = hf_class(hf_config)
        from verl.workers.engine.fsdp.utils import unfuse_moe_params

        hf = unfuse_moe_params(reference.state_dict().items(), hf_config.model_type)
        return dict(
            exported=exported,
            hf={name: list(t.shape) for name, t in hf},
            tied=bool(getattr(hf_config.get_text_config(), "tie_word_embeddings", False)),
            megatron_parameters=sum(1 for _ in model.named_parameters()),
        )
    finally:
        ps.destroy_model_parallel()


if __name__ == "__main__":
    serve_rank(run_scenario)
