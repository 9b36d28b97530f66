"""Multimodal-RoPE position ids ([4, seq] per sample) through TransferQueue.

The Omni thinkers train on [4, seq] position ids per sample (a text row plus the three
mRoPE rows, from the thinker's ``get_rope_index``; see :mod:`mapo_verl.patches.processors`).
TransferQueue packs a field with ``torch.nested.as_nested_tensor(values, layout=jagged)``,
which makes the *sequence* dimension ragged (``_ragged_idx == 2``) when lengths differ but,
when every sample in a batch has the same length, makes the first dimension — the 4 rows —
"ragged" with all lengths 4 (``_ragged_idx == 1``). veRL 0.9.1's
``maybe_fix_3d_position_ids`` then forces ``_ragged_idx = 2`` onto that tensor (its fix for
the index lost in a pickle round trip), leaving offsets that describe rows as if they were
tokens: the next mini-batch split fails ("split_with_sizes expects split_sizes to sum
exactly to ...") in any step whose sequences all have one length.

The wrapper rebuilds such a tensor (consistent, ragged on dim 1: its values hold
``offsets[-1]`` rows) as the per-sample [4, seq] tensors ragged on the sequence, then lets
veRL's function run; every other case is veRL's own.
"""

from __future__ import annotations

import functools

__all__ = ["install", "ragged_on_sequence"]

# modules that bind ``maybe_fix_3d_position_ids`` by name at import time
_IMPORTERS = (
    "verl.utils.tensordict_utils",
    "verl.workers.engine.base",
    "verl.workers.engine_workers",
    "verl.workers.engine_workers_tinker",
)


def ragged_on_sequence(position_ids):
    """A 3-D jagged tensor ragged on its first sample dim, rebuilt ragged on its last; else unchanged."""
    from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

    if not (position_ids.is_nested and position_ids.dim() == 3 and position_ids._ragged_idx == 1):
        return position_ids
    if position_ids.values().shape[0] != int(position_ids.offsets()[-1]):
        return position_ids  # not a consistent dim-1 layout (veRL's pickle case): leave it to veRL
    return nested_tensor_from_tensor_list(list(position_ids.unbind()), ragged_idx=2)


def _wrap(original):
    @functools.wraps(original)
    def maybe_fix_3d_position_ids(data):
        if "position_ids" in data.keys():
            fixed = ragged_on_sequence(data["position_ids"])
            if fixed is not data["position_ids"]:
                data["position_ids"] = fixed
        return original(data)

    return maybe_fix_3d_position_ids


def install() -> None:
    """Replace ``maybe_fix_3d_position_ids`` in veRL's modules (now, or when they are imported)."""
    from mapo_verl.patches._hooks import replace_function

    replace_function("verl.utils.tensordict_utils", "maybe_fix_3d_position_ids", _wrap, _IMPORTERS)
