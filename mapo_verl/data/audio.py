"""Audio decoding for the data path: a clip as a path, as file bytes or as samples → mono float32.

The audio-language processors veRL calls (Qwen2.5-Omni, Qwen2-Audio, Qwen3-Omni) take
samples at their feature extractor's rate (16 kHz), not paths. Parquet rows written by
``scripts/prepare_data.py`` may hold a path or the file's bytes; :func:`load_audio` turns
either into the samples the processor wants, and is the one decoder used by data
preparation (to find unreadable files), by :class:`mapo_verl.data.dataset.AudioRLHFDataset`
(training) and by ``scripts/evaluate.py``.

Decoding uses ``soundfile`` when it is installed (WAV, FLAC, OGG, MP3 with libsndfile ≥ 1.1;
``pip install mapo-verl[audio]``), else the standard library's ``wave`` module (PCM WAV,
8/16/24/32-bit). Resampling is band-limited (FFT), channels are averaged to mono.
"""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SAMPLING_RATE", "AudioDecodeError", "read_audio", "audio_header", "resample", "load_audio"]

# Whisper-style feature extractors of every audio model MAPO targets run at 16 kHz.
DEFAULT_SAMPLING_RATE = 16000


class AudioDecodeError(ValueError):
    """A clip that is missing, empty or cannot be decoded."""


def _read_with_wave(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    with wave.open(source, "rb") as handle:
        channels, width, rate = handle.getnchannels(), handle.getsampwidth(), handle.getframerate()
        raw = handle.readframes(handle.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    else:
        raise AudioDecodeError(f"unsupported WAV sample width {width} bytes")
    return samples.reshape(-1, channels), rate


def _read_with_soundfile(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    import soundfile

    samples, rate = soundfile.read(source, dtype="float32", always_2d=True)
    return samples, rate


def _has_soundfile() -> bool:
    try:
        import soundfile  # noqa: F401
    except ImportError:  # optional dependency (extra "audio")
        return False
    return True


def _source(source: str | os.PathLike | bytes) -> tuple[str, str | io.BytesIO]:
    """``(name for messages, what a reader opens)``; a missing file is an :class:`AudioDecodeError`."""
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>", io.BytesIO(bytes(source))
    name = os.fspath(source)
    if not Path(name).is_file():
        raise AudioDecodeError(f"audio file not found: {name}")
    return name, name


def _decode_failure(name: str, stream: str | io.BytesIO, error: Exception, with_soundfile: bool) -> AudioDecodeError:
    """Say what is wrong with the file: the reader's reason (never empty) and, without soundfile,
    whether the file is a WAV at all."""
    reason = str(error) or {"EOFError": "the data ends early (truncated or empty file)"}.get(
        type(error).__name__, "no reason given")
    hint = ""
    if not with_soundfile:
        if isinstance(stream, io.BytesIO):
            head = stream.getvalue()[:12]
        else:
            with open(stream, "rb") as handle:
                head = handle.read(12)
        if not head:
            hint = " (the file is empty)"
        elif head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            hint = (f" (not a WAV file: it starts with {head[:4]!r}; without soundfile only PCM WAV is read: "
                    "pip install soundfile for FLAC/OGG/MP3)")
        elif "unknown format" in reason:
            hint = " (a non-PCM WAV, e.g. float or compressed: pip install soundfile)"
    return AudioDecodeError(f"cannot decode {name}: {type(error).__name__}: {reason}{hint}")


def audio_header(source: str | os.PathLike | bytes) -> tuple[int, int]:
    """``(frames, sampling rate)`` of a file path or a file's bytes, from its header only (no decoding).

    Raises :class:`AudioDecodeError` as :func:`read_audio` does for a missing or unreadable file.
    """
    name, stream = _source(source)
    with_soundfile = _has_soundfile()
    try:
        if with_soundfile:
            import soundfile

            info = soundfile.info(stream)
            return int(info.frames), int(info.samplerate)
        with wave.open(stream, "rb") as handle:
            return int(handle.getnframes()), int(handle.getframerate())
    except Exception as error:  # wave.Error, EOFError, soundfile.LibsndfileError, ...
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        raise _decode_failure(name, stream, error, with_soundfile) from error


def read_audio(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """Decode a file path or a file's bytes to ``(mono float32 samples in [-1, 1], sampling rate)``.

    Raises :class:`AudioDecodeError` naming the source when it is missing, empty or undecodable.
    """
    name, stream = _source(source)
    with_soundfile = _has_soundfile()
    reader = _read_with_soundfile if with_soundfile else _read_with_wave
    try:
        samples, rate = reader(stream)
    except AudioDecodeError as error:
        raise AudioDecodeError(f"{name}: {error}") from error
    except Exception as error:  # wave.Error, EOFError, soundfile.LibsndfileError, ...
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        raise _decode_failure(name, stream, error, with_soundfile) from error
    if samples.size == 0:
        raise AudioDecodeError(f"{name}: the clip has no samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioDecodeError(f"{name}: the clip has non-finite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating / zero-padding the spectrum (FFT method).

    Frequencies above the lower Nyquist limit are removed, the rest are kept exactly; the
    signal is treated as periodic, so the first and last few milliseconds may ring slightly.
    """
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} -> {target_rate}")
    samples = np.asarray(samples, dtype=np.float64)
    if orig_rate == target_rate or samples.size == 0:
        return samples.astype(np.float32)
    n_in = samples.size
    n_out = max(1, int(round(n_in * target_rate / orig_rate)))
    spectrum = np.fft.rfft(samples)
    kept = min(spectrum.size, n_out // 2 + 1)
    out_spectrum = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spectrum[:kept] = spectrum[:kept]
    if n_out < n_in and n_out % 2 == 0:
        # the new Nyquist bin must be real for an even output length
        out_spectrum[-1] = out_spectrum[-1].real
    return (np.fft.irfft(out_spectrum, n=n_out) * (n_out / n_in)).astype(np.float32)


def load_audio(item: Any, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> np.ndarray:
    """One clip of a dataset row as mono float32 samples at ``sampling_rate``.

    ``item`` is a path (str / PathLike), a mapping with ``bytes`` (and optionally ``path``,
    as HF ``datasets`` and ``prepare_data --audio-format bytes`` store it), a mapping with
    ``array`` and ``sampling_rate`` (HF ``datasets`` after decoding), or a sequence of samples
    already at ``sampling_rate`` (``prepare_data --audio-format array``, the demo data).
    """
    if isinstance(item, (str, os.PathLike)):
        samples, rate = read_audio(item)
    elif isinstance(item, Mapping):
        if item.get("bytes") is not None:
            samples, rate = read_audio(item["bytes"])
        elif item.get("array") is not None:
            if "sampling_rate" not in item:
                raise AudioDecodeError("an audio mapping with 'array' needs 'sampling_rate'")
            samples, rate = np.asarray(item["array"], dtype=np.float32).reshape(-1), int(item["sampling_rate"])
        elif item.get("path") is not None:
            samples, rate = read_audio(item["path"])
        else:
            raise AudioDecodeError(f"an audio mapping needs 'bytes', 'array' or 'path', got keys {sorted(item)}")
    else:
        samples, rate = np.asarray(item, dtype=np.float32).reshape(-1), sampling_rate
    if samples.size == 0:
        raise AudioDecodeError("the clip has no samples")
    return resample(samples, rate, sampling_rate)

