"""Synthesised recordings: call format, tight edges, reproducibility, and the shipped sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from voiceload.audio import recordings
from voiceload.audio import wav as wavfile
from voiceload.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recordings").glob("*/*.wav"))

needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="espeak-ng and sox not installed"
)


def longest_pause_ms(x: np.ndarray, *, threshold: int, frame_ms: int = 2) -> float:
    """Longest run of frames peaking at or under `threshold` between the first and last louder one."""
    n = wavfile.SAMPLE_RATE * frame_ms // 1000
    peaks = np.abs(x[: len(x) // n * n].astype(np.int32)).reshape(-1, n).max(axis=1)
    loud = np.flatnonzero(peaks > threshold)
    return float((np.diff(loud) - 1).max() * frame_ms) if len(loud) > 1 else 0.0


SILENCE = 100  # -50 dBFS: sox's trimming threshold, below which espeak output is a true pause
VAD_LEVEL = 500  # -36 dBFS: voiceload.audio.vad's speech threshold (quiet fricatives can dip under it)


# --- pure parts ----------------------------------------------------------------------------------


def test_bot_and_caller_files_get_different_fixed_voices() -> None:
    assert recordings.voice_for("bot-01-x.txt") == recordings.BOT_VOICE
    assert recordings.voice_for("caller-01-x.txt") == recordings.CALLER_VOICE
    assert recordings.BOT_VOICE != recordings.CALLER_VOICE


def test_text_becomes_one_line() -> None:
    assert recordings.clean_text("  Hello,\n\tthere.  \n") == "Hello, there."


def test_manifest_is_sorted_tab_separated_one_row_per_file() -> None:
    text = recordings.manifest_text([("b.wav", 1200, "Second\nline."), ("a.wav", 900, "First.")])
    assert text == "file\tduration_ms\ttranscript\na.wav\t900\tFirst.\nb.wav\t1200\tSecond line.\n"


def test_sox_writes_call_audio() -> None:
    cmd = recordings.sox_command(Path("out.wav"))
    assert cmd[:3] == ["sox", "-R", "-D"]  # repeatable, no dither: bit-identical output
    out = cmd.index("out.wav")
    assert cmd[out - 8 : out] == ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]
    assert cmd[-2:] == ["norm", "-3.0"]


# --- synthesis -----------------------------------------------------------------------------------


@needs_tts
def test_synthesis_makes_trimmed_normalised_call_audio(tmp_path: Path) -> None:
    (tmp_path / "caller-01-hi.txt").write_text("Hello, this is a test.\n", encoding="utf-8")
    written = recordings.make_recordings(tmp_path)
    wav = tmp_path / "caller-01-hi.wav"
    assert written == [wav]
    assert wavfile.check_call_wav(wav) == []
    x = wavfile.load_wav(wav)
    assert 0.8 < len(x) / wavfile.SAMPLE_RATE < 3.5
    # speech right at both edges: sound above -50 dBFS within the first and the last 5 ms
    edge = wavfile.SAMPLE_RATE * 5 // 1000
    assert np.abs(x[:edge].astype(np.int32)).max() > 100
    assert np.abs(x[-edge:].astype(np.int32)).max() > 100
    peak_dbfs = 20 * np.log10(np.abs(x.astype(np.int32)).max() / 32768)
    assert peak_dbfs == pytest.approx(-3.0, abs=0.1)
    assert longest_pause_ms(x, threshold=VAD_LEVEL) < 300
    manifest = (tmp_path / recordings.MANIFEST).read_text(encoding="utf-8").splitlines()
    ms = round(len(x) * 1000 / wavfile.SAMPLE_RATE)
    assert manifest == ["file\tduration_ms\ttranscript", f"caller-01-hi.wav\t{ms}\tHello, this is a test."]


@needs_tts
def test_up_to_date_files_are_skipped_unless_stale_or_forced(tmp_path: Path) -> None:
    txt = tmp_path / "bot-01-ok.txt"
    txt.write_text("Okay.", encoding="utf-8")
    (wav,) = recordings.make_recordings(tmp_path)
    first = wav.read_bytes()
    assert recordings.make_recordings(tmp_path) == []
    assert recordings.make_recordings(tmp_path, force=True) == [wav]
    assert wav.read_bytes() == first  # fixed voices and parameters: reproducible to the byte
    later = wav.stat().st_mtime + 10
    os.utime(txt, (later, later))
    assert recordings.make_recordings(tmp_path) == [wav]


@needs_tts
def test_bot_and_caller_voices_sound_different(tmp_path: Path) -> None:
    for name in ("bot-01-same.txt", "caller-01-same.txt"):
        (tmp_path / name).write_text("Same words.", encoding="utf-8")
    recordings.make_recordings(tmp_path)
    bot = wavfile.load_wav(tmp_path / "bot-01-same.wav")
    caller = wavfile.load_wav(tmp_path / "caller-01-same.wav")
    assert len(bot) != len(caller) or not np.array_equal(bot, caller)


def test_missing_tools_are_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "caller-01-x.txt").write_text("Hi.", encoding="utf-8")
    monkeypatch.setattr(recordings.shutil, "which", lambda _name: None)
    with pytest.raises(UserError, match=r"espeak-ng not found: run `make demo`.*apt-get install espeak-ng"):
        recordings.make_recordings(tmp_path)


def test_empty_transcript_and_missing_directory_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such directory"):
        recordings.make_recordings(tmp_path / "nope")
    (tmp_path / "caller-01-x.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(UserError, match="empty transcript"):
        recordings.make_recordings(tmp_path)


# --- the shipped sets ----------------------------------------------------------------------------


def test_shipped_sets_are_complete() -> None:
    for name in ("demo", "booking"):
        folder = REPO / "recordings" / name
        stems = {p.stem for p in folder.glob("*.txt")}
        assert stems and stems == {p.stem for p in folder.glob("*.wav")}
        rows = (folder / recordings.MANIFEST).read_text(encoding="utf-8").splitlines()[1:]
        assert sorted(r.split("\t")[0] for r in rows) == sorted(f"{s}.wav" for s in stems)


@pytest.mark.parametrize("wav", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recordings_are_short_call_audio_without_long_pauses(wav: Path) -> None:
    assert wavfile.check_call_wav(wav) == []
    x = wavfile.load_wav(wav)
    assert 0.8 <= len(x) / wavfile.SAMPLE_RATE <= 3.5
    # shorter than the VAD's 300 ms hangover, so one prompt stays one speech segment
    assert longest_pause_ms(x, threshold=SILENCE) < 250
    assert longest_pause_ms(x, threshold=VAD_LEVEL) < 300
