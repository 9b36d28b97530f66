"""Audio decoding of the data path (mapo_verl.data.audio) against WAV files written with the standard library."""

import numpy as np
import pytest

from mapo_verl.data.audio import AudioDecodeError, load_audio, read_audio, resample

from tests.recipes.conftest import tone, write_wav


@pytest.mark.parametrize("width,tolerance", [(1, 1 / 100), (2, 1 / 30000), (3, 1 / 4e6)])
def test_pcm_widths_read_back_the_written_samples(tmp_path, width, tolerance):
    signal = tone(440.0, 0.25, 16000)
    samples, rate = read_audio(write_wav(tmp_path / "a.wav", signal, 16000, width=width))
    assert rate == 16000 and samples.dtype == np.float32 and samples.shape == signal.shape
    np.testing.assert_allclose(samples, signal, atol=tolerance)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(300.0, 0.1, 8000), tone(500.0, 0.1, 8000, amplitude=0.25)
    samples, _ = read_audio(write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000))
    np.testing.assert_allclose(samples, (left + right) / 2, atol=2 / 32767)


def test_resampling_keeps_a_tone_exactly():
    # 441 Hz for 1 s: a whole number of periods, so band-limited resampling is exact
    original = tone(441.0, 1.0, 44100)
    resampled = resample(original, 44100, 16000)
    assert resampled.shape == (16000,)
    np.testing.assert_allclose(resampled, tone(441.0, 1.0, 16000), atol=1e-5)


def test_resampling_removes_frequencies_above_the_new_nyquist():
    mixed = tone(1000.0, 1.0, 48000) + tone(12000.0, 1.0, 48000)  # 12 kHz > 8 kHz Nyquist of 16 kHz
    resampled = resample(mixed, 48000, 16000)
    np.testing.assert_allclose(resampled, tone(1000.0, 1.0, 16000), atol=1e-5)


def test_upsampling_and_identity():
    signal = tone(200.0, 0.5, 8000)
    np.testing.assert_allclose(resample(signal, 8000, 16000), tone(200.0, 0.5, 16000), atol=1e-5)
    np.testing.assert_array_equal(resample(signal, 8000, 8000), signal.astype(np.float32))


def test_load_audio_accepts_every_stored_form(tmp_path):
    path = write_wav(tmp_path / "c.wav", tone(441.0, 1.0, 44100), 44100)
    expected = tone(441.0, 1.0, 16000)
    for item in (str(path), path, {"bytes": path.read_bytes(), "path": "c.wav"}, {"path": str(path)},
                 {"array": tone(441.0, 1.0, 44100), "sampling_rate": 44100}):
        np.testing.assert_allclose(load_audio(item, 16000), expected, atol=1e-4)
    samples = tone(100.0, 0.1, 16000).tolist()  # already at the target rate: passed through
    np.testing.assert_allclose(load_audio(samples, 16000), samples, atol=1e-7)


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing.wav", "not found"),
    (lambda d: (d / "junk.wav").write_bytes(b"not a wav file") and d / "junk.wav", "cannot decode"),
    (lambda d: write_wav(d / "empty.wav", np.zeros(0), 16000), "no samples"),
])
def test_bad_clips_raise_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(str(path))


def test_bad_mappings_are_rejected():
    with pytest.raises(AudioDecodeError, match="needs 'bytes', 'array' or 'path'"):
        load_audio({"url": "x"})
    with pytest.raises(AudioDecodeError, match="sampling_rate"):
        load_audio({"array": [0.1, 0.2]})
    with pytest.raises(AudioDecodeError, match="cannot decode"):
        load_audio({"bytes": b"RIFF...."})
