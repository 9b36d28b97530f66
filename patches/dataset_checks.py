"""Every row of veRL's ``RLHFDataset`` (and its subclasses) checked when the dataset is loaded.

veRL 0.9.1 finds a bad multimodal row only when it is rolled out: as a bare ``assert`` in
``_build_messages``, a traceback per response naming a random uid, a half-padded batch, or
a rollout that never returns. This patch runs :func:`mapo_verl.data.row_checks.check_rows`
on the loaded table right before veRL's own over-long filter
(``RLHFDataset.maybe_filter_out_long_prompts``, called for the train and val sets and on
resume), with the model's processor for placeholder tokens, audio window and prompt
lengths. Bad rows are filtered out (or, with ``data.row_checks.strict=true``, fail the
load); the report goes to ``data.row_checks.report_dir`` (default: the directory of the
run's metrics file, ``$VERL_FILE_LOGGER_PATH``; neither set: no file) as
``row_checks_<data files>.json`` and its summary to the log. The counts stay on the
dataset as ``row_check_counts`` (logged as ``mapo/bad_rows`` and ``mapo/truncated_clips``
by :mod:`mapo_verl.patches.faults`).
"""

from __future__ import annotations

import functools
import os
import re
from bisect import bisect_right
from pathlib import Path

from mapo_verl.data.row_checks import BadRowsError, RowCheckSettings, check_rows

__all__ = ["DATASET_MODULE", "PLACEHOLDER_ATTRIBUTES", "install", "multimodal_lengths_for", "report_path"]

DATASET_MODULE = "verl.utils.dataset.rl_dataset"
# processor / tokenizer attributes naming the tokens a model fills with features or uses as their fences
PLACEHOLDER_ATTRIBUTES = ("audio_token", "image_token", "video_token", "audio_bos_token", "audio_eos_token",
                          "vision_bos_token", "vision_eos_token", "vision_start_token", "vision_end_token")
_MARKERS = re.compile("(<image>|<video>|<audio>)")
_BATCH_ROWS = 256


def _placeholder_tokens(processor) -> list[str]:
    if processor is None:
        return []
    tokenizer = getattr(processor, "tokenizer", None)
    tokens = {getattr(owner, attr, None) for owner in (processor, tokenizer) for attr in PLACEHOLDER_ATTRIBUTES}
    return sorted(token for token in tokens if isinstance(token, str) and token)


def multimodal_lengths_for(processor, chat_template_kwargs: dict | None = None):
    """A :data:`mapo_verl.data.row_checks.MultimodalLengths` for an audio-model processor (None for others)."""
    from mapo_verl.patches.audio_models import audio_family_for_processor

    family = audio_family_for_processor(processor)
    extractor = getattr(processor, "feature_extractor", None)
    if family is None or extractor is None:
        return None
    import torch

    hop = int(extractor.hop_length)
    tokenizer = processor.tokenizer
    audio_token_id = tokenizer.convert_tokens_to_ids(processor.audio_token)
    kwargs = dict(chat_template_kwargs or {})

    def structured(messages):
        result = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                parts = [part for part in _MARKERS.split(content) if part]
                content = [{"type": "audio", "audio": None} if part == "<audio>" else {"type": "text", "text": part}
                           for part in parts]
            result.append({**message, "content": content})
        return result

    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: skip transformers' wrapping

    def token_ids(texts):
        if backend is not None:
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def lengths(messages_batch, samples_batch):
        texts = [processor.apply_chat_template(structured(messages), add_generation_prompt=True, tokenize=False,
                                               **kwargs) for messages in messages_batch]
        frames = torch.tensor([-(-count // hop) for samples in samples_batch for count in samples])
        audio_tokens = family.output_lengths(frames).tolist() if len(frames) else []
        results, start = [], 0
        for row_ids, samples in zip(token_ids(texts), samples_batch, strict=True):
            per_clip = audio_tokens[start:start + len(samples)]
            start += len(samples)
            results.append((len(row_ids) - row_ids.count(audio_token_id) + sum(per_clip), per_clip))
        return results

    return lengths


def report_path(settings: RowCheckSettings, data_files) -> Path | None:
    """Where the report of a dataset loaded from ``data_files`` is written (None: nowhere, only logged)."""
    if settings.report_dir:
        directory = Path(settings.report_dir)
    elif os.environ.get("VERL_FILE_LOGGER_PATH"):
        directory = Path(os.environ["VERL_FILE_LOGGER_PATH"]).parent
    else:
        return None
    stems = "+".join(Path(str(name)).stem for name in data_files)
    return directory / f"row_checks_{stems}.json"


def _locator(data_files, total_rows: int):
    """Dataset position -> (file, row in file), when every file is a parquet of known size."""
    import pyarrow.parquet as pq

    try:
        sizes = [pq.read_metadata(str(name)).num_rows for name in data_files]
    except Exception:  # json inputs, remote paths: positions only
        return lambda position: (None, None)
    if sum(sizes) != total_rows:  # max_samples selected a subset
        return lambda position: (None, None)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    names = [str(name) for name in data_files]

    def locate(position: int):
        file_number = bisect_right(starts, position) - 1
        return names[file_number], position - starts[file_number]

    return locate


def _check_dataset(dataset, dataframe):
    settings = RowCheckSettings.from_data_config(dataset.config)
    if not settings.enable:
        return dataframe
    processor = dataset.processor
    extractor = getattr(processor, "feature_extractor", None)
    rate = int(dataset.config.get("audio_sampling_rate") or getattr(extractor, "sampling_rate", 16000))
    window = getattr(extractor, "n_samples", None)
    report = check_rows(
        dataframe.with_format("arrow").iter(batch_size=_BATCH_ROWS),
        prompt_key=dataset.prompt_key,
        audio_key=dataset.audio_key,
        sampling_rate=rate,
        window_samples=int(window) if window else None,
        max_prompt_length=int(dataset.max_prompt_length),
        placeholder_tokens=_placeholder_tokens(processor),
        multimodal_lengths=multimodal_lengths_for(processor, dataset.apply_chat_template_kwargs) if processor else None,
        decodes_files=bool(getattr(type(dataset), "decodes_audio_files", False)),
        long_clips=settings.long_clips,
        locate=_locator(dataset.data_files, len(dataframe)),
    )
    path = report_path(settings, dataset.original_data_files)
    if path is not None:
        report.write(path)
    print(f"{report.summary()}\nrow-check report: {path or 'not written (set data.row_checks.report_dir)'}",
          flush=True)
    dataset.row_check_counts = {"bad_rows": len(report.bad_rows), "truncated_clips": len(report.truncated_clips)}
    if report.bad_rows and settings.strict:
        raise BadRowsError(f"{len(report.bad_rows)} bad row(s) with data.row_checks.strict=true (report: {path}):\n"
                           + "\n".join(f"  {bad.describe()}" for bad in report.bad_rows[:20]))
    if report.bad_rows:
        bad = report.bad_positions
        dataframe = dataframe.select([position for position in range(len(dataframe)) if position not in bad])
    return dataframe


def _wrap(original):
    @functools.wraps(original)
    def maybe_filter_out_long_prompts(self, dataframe=None):
        return original(self, _check_dataset(self, dataframe))

    return maybe_filter_out_long_prompts


def _wrap_build_messages(original):
    """veRL checks markers against media with bare asserts; with the checks off, name the row."""

    @functools.wraps(original)
    def _build_messages(self, example, key):
        try:
            return original(self, example, key)
        except AssertionError as error:
            index = (example.get("extra_info") or {}).get("index")
            raise ValueError(f"dataset row with extra_info.index={index}: {error}: its <image>/<video>/<audio> "
                             "markers and its media disagree (data.row_checks filters such rows at load)") from error

    return _build_messages


def _patch(module) -> None:
    cls = module.RLHFDataset
    if getattr(cls.maybe_filter_out_long_prompts, "__mapo_original__", None) is None:
        for name, wrap in (("maybe_filter_out_long_prompts", _wrap), ("_build_messages", _wrap_build_messages)):
            original = getattr(cls, name)
            patched = wrap(original)
            patched.__mapo_original__ = original
            setattr(cls, name, patched)


def install() -> None:
    """Check rows whenever veRL's dataset module is imported."""
    from mapo_verl.patches._hooks import when_imported

    when_imported(DATASET_MODULE, _patch)
