"""Megatron-Bridge 0.5.1's Qwen2.5-VL bridge and the checkpoint's mRoPE sections (``patches/megatron_bridge.py``):
unpatched it keeps the provider's default [16, 24, 24] whatever the checkpoint says; patched the provider takes
the checkpoint's sections (the embedded tiny Qwen2.5-VL has [2, 3, 3]: head_dim 16)."""

from types import SimpleNamespace

import pytest

from mapo_verl.patches.megatron_bridge import hf_mrope_section


@pytest.mark.parametrize("config, sections", [
    (SimpleNamespace(rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]}), [2, 3, 3]),
    (SimpleNamespace(rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}), [16, 24, 24]),
    (SimpleNamespace(rope_parameters={"rope_type": "default"}), None),
    (SimpleNamespace(), None),
], ids=["transformers-5", "released-config-file", "no-sections", "no-rope"])
def test_hf_mrope_section_reads_both_config_spellings(config, sections):
    assert hf_mrope_section(config) == sections


def test_the_qwen25_vl_provider_takes_the_checkpoint_s_sections(tmp_path):
    from mapo_verl.cpu.megatron import import_megatron_bridge
    from mapo_verl.demo.vision import save_tiny_qwen2_5_vl
    from mapo_verl.patches import megatron_bridge

    import_megatron_bridge()
    assert megatron_bridge.install()
    from megatron.bridge import AutoBridge
    from megatron.bridge.models.qwen_vl.qwen25_vl_bridge import Qwen25VLBridge

    bridge = AutoBridge.from_hf_pretrained(str(save_tiny_qwen2_5_vl(tmp_path / "vl")))
    assert bridge.to_megatron_provider(load_weights=False).mrope_section == [2, 3, 3]
    original = Qwen25VLBridge.provider_bridge.__mapo_original__
    assert original(Qwen25VLBridge(), bridge.hf_pretrained).mrope_section == [16, 24, 24]  # the defect
