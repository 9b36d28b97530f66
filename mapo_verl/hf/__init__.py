"""HF (transformers) attention hooks for MAPO's attention loss (docs/DESIGN.md, "The attention branch"); no veRL import.

- :func:`indicator_v_mass` — the audio mass of every query through the model's own
  attention function (eager / sdpa / flash-attn), exact gradients, no ``S×S`` tensor.
- :class:`AudioMassProbe` — hooks on chosen decoder layers; records per-layer masses during a
  training forward, correct under activation checkpointing and packed inputs.
"""

from mapo_verl.hf.attention import attention_interface_hook, indicator_v_mass
from mapo_verl.hf.probe import AudioMassProbe, MassCapture, decoder_layers

__all__ = [
    "indicator_v_mass",
    "attention_interface_hook",
    "AudioMassProbe",
    "MassCapture",
    "decoder_layers",
]
