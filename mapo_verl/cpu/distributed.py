"""Process-group set-up for the CPU platform (dry runs and CI only).

veRL builds its default backend string as ``f"cpu:gloo,{device}:{backend}"``; on the CPU
platform that is ``"cpu:gloo,cpu:gloo"``, which torch rejects ("Duplicate device type
cpu"). :func:`install` wraps ``torch.distributed.init_process_group`` so that a backend
string repeating the same ``device:backend`` entry is passed with the entry once. Every
other argument, and every other backend string, is passed through unchanged.
"""

from __future__ import annotations

import functools

import torch.distributed

__all__ = ["dedupe_backend", "install"]


def dedupe_backend(backend):
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``; anything else is returned as given."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    entries = [entry.strip() for entry in backend.split(",")]
    return ",".join(dict.fromkeys(entries))


def install() -> None:
    """Wrap ``torch.distributed.init_process_group`` (idempotent)."""
    original = torch.distributed.init_process_group
    if getattr(original, "__mapo_original__", None) is not None:
        return

    @functools.wraps(original)
    def init_process_group(backend=None, *args, **kwargs):
        return original(dedupe_backend(backend), *args, **kwargs)

    init_process_group.__mapo_original__ = original
    torch.distributed.init_process_group = init_process_group
