"""Version-pinned adaptations of veRL (installed as ``mapo_verl.patches``).

Each patch targets exactly the veRL version in :data:`TESTED_VERL_VERSION` and refuses
to apply to any other, with an error that says so: a monkey-patch on an untested
version is a silent wrong result waiting to happen.
"""

from __future__ import annotations

TESTED_VERL_VERSION = "0.9.1"


class UnsupportedVerlVersionError(RuntimeError):
    """The installed veRL is not the version these patches were written against."""


def require_tested_verl() -> None:
    """Raise :class:`UnsupportedVerlVersionError` unless veRL is :data:`TESTED_VERL_VERSION`."""
    import verl

    if verl.__version__ != TESTED_VERL_VERSION:
        raise UnsupportedVerlVersionError(
            f"mapo_verl's patches are pinned to verl=={TESTED_VERL_VERSION}, found verl=={verl.__version__}; "
            f"install verl=={TESTED_VERL_VERSION} (pip install 'mapo-verl' pins it)"
        )


_applied = False


def apply_audio_model_patches() -> None:
    """Adapt veRL's data/processor path to Qwen2.5-Omni thinker, Qwen2-Audio and Qwen3-Omni thinker.

    docs/DESIGN.md, "Patches": veRL 0.9.1 has generic audio plumbing (``input_features`` /
    ``feature_attention_mask`` as varlen multimodal keys) but rejects these models' processors;
    the Omni thinker does not check placeholder counts against the audio features.

    Installs (for the families of :mod:`mapo_verl.patches.audio_models`; any other model goes
    through veRL unchanged, except that the wrap-order and position-id fixes also apply to it
    in the cases where veRL itself would fail):

    - :mod:`mapo_verl.patches.processors`: ``hf_processor`` loads their processors (veRL
      rejects them) and binds the Omni thinkers' multimodal-RoPE index for position ids;
    - :mod:`mapo_verl.patches.model_class`: the FSDP engine loads them with their LM head;
    - :mod:`mapo_verl.patches.checkpoint_names`: the FSDP engine trains a full Omni checkpoint's
      thinker, and its weight sync sends the checkpoint's names (the ones vLLM loads);
    - :mod:`mapo_verl.patches.fsdp_wrap`: FSDP2 shards their nested encoder/layer classes
      inner-first (the Omni thinkers' audio and vision encoders);
    - :mod:`mapo_verl.patches.position_ids`: their [4, seq] mRoPE position ids survive
      TransferQueue batches whose sequences all have one length;
    - :mod:`mapo_verl.patches.agent_loop`: the agent loop computes ``input_features`` /
      ``feature_attention_mask`` per trajectory and checks placeholder counts per sample;
    - :mod:`mapo_verl.patches.megatron_bridge` (where Megatron-Bridge is installed): veRL's
      Megatron engine builds and feeds Megatron-Bridge's Omni / audio models.
    - :mod:`mapo_verl.patches.dataset_checks`: every dataset row is checked at load, bad rows
      are reported and filtered (or fail the load);
    - :mod:`mapo_verl.patches.faults`: rollout failures name their row and fail the run (or are
      counted and tolerated up to a fraction); the metrics file survives a resume;
    - :mod:`mapo_verl.patches.vl_text_rows`: veRL's Qwen2-VL / Qwen2.5-VL forward accepts a micro-batch
      without images under transformers 5 (text-only rows; MAPO's ablated pass drops the images).

    Heavy veRL modules are patched when veRL imports them. Idempotent.
    """
    global _applied
    if _applied:
        return
    require_tested_verl()
    from mapo_verl.patches import (
        agent_loop,
        checkpoint_names,
        dataset_checks,
        faults,
        fsdp_wrap,
        megatron_bridge,
        model_class,
        position_ids,
        processors,
        vl_text_rows,
    )

    processors.install()
    megatron_bridge.install()
    model_class.install()
    checkpoint_names.install()
    fsdp_wrap.install()
    position_ids.install()
    agent_loop.install()
    dataset_checks.install()
    faults.install()
    vl_text_rows.install()
    _applied = True
