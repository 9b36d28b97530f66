"""Fixtures of the attention-loss tests: a one-process gloo group and CPU device ids for veRL."""

from __future__ import annotations

import pytest
import torch
import torch.distributed


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    """veRL's engine all-reduces over the dp group: a world of one process on CPU.

    Module-scoped and torn down afterwards, so other test areas that start their own
    default group in the same pytest process are not affected.
    """
    owned = not torch.distributed.is_initialized()
    if owned:
        store = tmp_path_factory.mktemp("gloo") / "store"
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield torch.distributed.group.WORLD
    if owned:
        torch.distributed.destroy_process_group()


@pytest.fixture
def cpu_engine(gloo_group, monkeypatch):
    """veRL asks its platform for the device id (CUDA here); point engine code at the CPU."""
    import verl.workers.engine.fsdp.transformer_impl as transformer_impl

    import mapo_verl.verl_ext.fsdp_engine as fsdp_engine

    monkeypatch.setattr(transformer_impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(fsdp_engine, "get_device_id", lambda: "cpu")
