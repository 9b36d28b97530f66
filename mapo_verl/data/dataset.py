"""veRL's ``RLHFDataset`` for rows whose clips are paths or file bytes.

veRL hands each ``<audio>`` item of a row to the processor as it is; the audio processors
need samples. Select this class with::

    data.custom_cls.path=pkg://mapo_verl.data.dataset
    data.custom_cls.name=AudioRLHFDataset

(the recipes in ``recipes/`` do). veRL's agent loop asks the dataset *class* for the
multi-modal inputs of every prompt, so the decoding below applies to rollout, length
filtering and the recomputed training features alike. Items that are already samples pass
through unchanged. The target rate is ``data.audio_sampling_rate`` (default 16 kHz, the rate
of the Whisper-style feature extractors of Qwen2-Audio / Qwen2.5-Omni / Qwen3-Omni).
"""

from __future__ import annotations

from verl.utils.dataset.rl_dataset import RLHFDataset

from mapo_verl.data.audio import DEFAULT_SAMPLING_RATE, AudioDecodeError, load_audio

__all__ = ["AudioRLHFDataset"]


class AudioRLHFDataset(RLHFDataset):
    """``RLHFDataset`` whose audio items are decoded to mono float32 samples (paths, bytes or samples)."""

    # the load-time row checks (mapo_verl.patches.dataset_checks) accept paths and file bytes
    decodes_audio_files = True

    @classmethod
    def _process_multi_modal_info(cls, messages, image_patch_size, config):
        images, videos, audios = super()._process_multi_modal_info(messages, image_patch_size, config)
        if audios is None:
            return images, videos, audios
        rate = int((config or {}).get("audio_sampling_rate", DEFAULT_SAMPLING_RATE) or DEFAULT_SAMPLING_RATE)
        decoded = []
        for position, item in enumerate(audios):
            try:
                decoded.append(load_audio(item, rate))
            except AudioDecodeError as error:
                raise AudioDecodeError(f"audio item {position} of the prompt: {error}") from error
        return images, videos, decoded
