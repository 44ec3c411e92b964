"""The call-audio rule (8 kHz, mono, PCM_16) and the WAV helpers that enforce it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceload.audio import wav as wavfile
from voiceload.errors import UserError


def tone(seconds: float = 0.5, rate: int = wavfile.SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def test_write_then_load_round_trips_samples(tmp_path: Path) -> None:
    x = tone()
    path = tmp_path / "t.wav"
    wavfile.write_wav(path, x)
    info = wavfile.probe_wav(path)
    assert (info.sample_rate, info.channels, info.subtype, info.frames) == (8000, 1, "PCM_16", len(x))
    assert info.duration_s == pytest.approx(0.5)
    y = wavfile.load_wav(path)
    assert y.dtype == np.int16 and y.ndim == 1
    assert np.array_equal(x, y)
    assert wavfile.check_call_wav(path) == []


def test_write_wav_clips_wider_integers_and_refuses_other_shapes(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    wavfile.write_wav(path, np.array([0, 40000, -40000], dtype=np.int32))
    assert wavfile.load_wav(path).tolist() == [0, 32767, -32768]
    with pytest.raises(ValueError):
        wavfile.write_wav(path, np.zeros((10, 2), dtype=np.int16))
    with pytest.raises(ValueError):
        wavfile.write_wav(path, np.zeros(10, dtype=np.float32))


def test_missing_and_corrupt_files_are_user_errors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(UserError, match=r"missing\.wav: no such file"):
        wavfile.probe_wav(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(UserError, match=r"corrupt\.wav: not a readable WAV file: "):
        wavfile.probe_wav(corrupt)
    with pytest.raises(UserError, match=r"corrupt\.wav"):
        wavfile.load_wav(corrupt)
    assert wavfile.check_call_wav(missing) == [f"{missing}: no such file"]


def test_check_call_wav_names_every_broken_rule(tmp_path: Path) -> None:
    path = tmp_path / "wide.wav"
    stereo_16k = np.zeros((1600, 2), dtype=np.float32)
    sf.write(str(path), stereo_16k, 16000, subtype="FLOAT", format="WAV")
    problems = wavfile.check_call_wav(path)
    assert problems == [
        f"{path}: sample rate is 16000 Hz, must be 8000 Hz",
        f"{path}: has 2 channels, must be mono",
        f"{path}: sample format is FLOAT, must be 16-bit PCM (PCM_16)",
    ]
    with pytest.raises(UserError, match="16000 Hz"):
        wavfile.load_wav(path)


def test_a_non_wav_sound_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    sf.write(str(path), tone(), 8000, format="FLAC")
    _, problems = wavfile.call_wav_problems(path)
    assert problems == ["not a readable WAV file: it is FLAC, not WAV"]


def test_a_truncated_wav_is_refused(tmp_path: Path) -> None:
    """libsndfile plays what is left of a cut-off file; its header says how much there should be."""
    whole = tmp_path / "whole.wav"
    wavfile.write_wav(whole, tone())
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:-1000])
    problem = f"truncated: its header says {len(data) - 44} bytes of audio, the file holds {len(data) - 44 - 1000}"
    assert wavfile.call_wav_problems(cut)[1] == [problem]
    assert wavfile.check_call_wav(cut) == [f"{cut}: {problem}"]
    with pytest.raises(UserError, match=r"cut\.wav: truncated"):
        wavfile.load_wav(cut)
    assert wavfile.check_call_wav(whole) == []


def test_a_streamed_wav_without_a_length_and_extra_chunks_are_fine(tmp_path: Path) -> None:
    body = tone().tobytes()
    fmt = b"fmt " + (16).to_bytes(4, "little") + bytes.fromhex("01000100401f0000803e00000200" "1000")
    odd = b"LIST" + (3).to_bytes(4, "little") + b"abc\0"  # an odd-sized chunk, padded to even
    for size in (0xFFFFFFFF, len(body)):  # "length unknown", as a streaming writer leaves it; the real size
        path = tmp_path / f"{size}.wav"
        path.write_bytes(b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + b"WAVE" + fmt + odd
                         + b"data" + size.to_bytes(4, "little") + body)
        assert wavfile.check_call_wav(path) == [], size
